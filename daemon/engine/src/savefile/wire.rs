//! Wire constants, the counting input the parsers read through, and the QEMU preamble
//! parser shared by the reader and layout validation.

use std::io::{self, Read};

use super::SaveFileError;
use crate::limits::MAX_QEMU_CONFIG_BYTES;

/// The magic of a complete libvirt save file.
pub const LIBVIRT_MAGIC: &[u8; 16] = b"LibvirtQemudSave";
/// The magic libvirt writes first, and replaces with [`LIBVIRT_MAGIC`] (reopening the
/// file) once the save succeeded.
pub const LIBVIRT_PARTIAL_MAGIC: &[u8; 16] = b"LibvirtQemudPart";
/// Highest libvirt save header version known (2 added the cookie and compression field).
pub(super) const LIBVIRT_MAX_VERSION: u32 = 2;
/// Unused u32 words at the end of the libvirt header.
pub(super) const LIBVIRT_UNUSED_WORDS: usize = 14;
/// Room libvirt leaves after the XML so it can grow in place.
pub(super) const XML_PADDING_BYTES: usize = 64 * 1024;

pub(super) const QEVM_MAGIC: u32 = 0x5145_564d;
pub(super) const QEVM_VERSION: u32 = 3;

pub(super) const SECTION_START: u8 = 0x01;
pub(super) const SECTION_PART: u8 = 0x02;
pub(super) const SECTION_END: u8 = 0x03;
pub(super) const SUBSECTION: u8 = 0x05;
pub(super) const CONFIGURATION: u8 = 0x07;
pub(super) const SECTION_FOOTER: u8 = 0x7e;

pub(super) const RAM_IDSTR: &[u8] = b"ram";
/// The ram section's version_id (QEMU has written 4 for a decade).
pub(super) const RAM_VERSION: u32 = 4;

pub(super) const FLAG_ZERO: u64 = 0x02;
pub(super) const FLAG_MEM_SIZE: u64 = 0x04;
pub(super) const FLAG_PAGE: u64 = 0x08;
pub(super) const FLAG_EOS: u64 = 0x10;
pub(super) const FLAG_CONTINUE: u64 = 0x20;
/// Flag bits live below the page size.
pub(super) const FLAG_MASK: u64 = 0xfff;
pub(super) const KNOWN_FLAGS: u64 =
    FLAG_ZERO | FLAG_MEM_SIZE | FLAG_PAGE | FLAG_EOS | FLAG_CONTINUE;

/// Longest idstr QEMU writes (its length is one byte).
pub(super) const MAX_IDSTR_BYTES: usize = 255;
/// log2 of the page size; a target-page-bits subsection must agree.
const PAGE_BITS: u32 = 12;

const SUB_TARGET_PAGE_BITS: &[u8] = b"configuration/target-page-bits";
const SUB_CAPABILITIES: &[u8] = b"configuration/capabilities";
const SUB_UUID: &[u8] = b"configuration/uuid";

/// Classifies a ram record header's flags that the caller did not expect.
pub(super) fn bad_flags(flags: u64, offset: u64) -> SaveFileError {
    if flags & !KNOWN_FLAGS != 0 {
        SaveFileError::UnknownPageFlags { flags, offset }
    } else {
        SaveFileError::UnexpectedRecord { flags, offset }
    }
}

/// A reader that counts the bytes consumed and can record them.
pub(super) struct Input<R> {
    inner: R,
    pos: u64,
    record: Option<Vec<u8>>,
}

impl<R: Read> Input<R> {
    pub(super) fn new(inner: R) -> Self {
        Input {
            inner,
            pos: 0,
            record: None,
        }
    }

    /// Bytes consumed so far.
    pub(super) fn pos(&self) -> u64 {
        self.pos
    }

    /// Starts keeping a copy of every byte read.
    pub(super) fn start_recording(&mut self) {
        self.record = Some(Vec::new());
    }

    /// Stops recording and returns what was recorded.
    pub(super) fn take_recording(&mut self) -> Vec<u8> {
        self.record.take().unwrap_or_default()
    }

    pub(super) fn into_inner(self) -> R {
        self.inner
    }

    pub(super) fn exact(
        &mut self,
        buf: &mut [u8],
        what: &'static str,
    ) -> Result<(), SaveFileError> {
        self.inner
            .read_exact(buf)
            .map_err(|e| eof_is_truncation(e, what))?;
        self.pos += buf.len() as u64;
        if let Some(rec) = &mut self.record {
            rec.extend_from_slice(buf);
        }
        Ok(())
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, SaveFileError> {
        let mut b = [0u8; 1];
        self.exact(&mut b, what)?;
        Ok(b[0])
    }

    pub(super) fn be32(&mut self, what: &'static str) -> Result<u32, SaveFileError> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_be_bytes(b))
    }

    pub(super) fn be64(&mut self, what: &'static str) -> Result<u64, SaveFileError> {
        let mut b = [0u8; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_be_bytes(b))
    }

    pub(super) fn le32(&mut self, what: &'static str) -> Result<u32, SaveFileError> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads `len` bytes, growing the buffer as data arrives (a false length in a short
    /// file costs no more memory than the file holds). Callers bound `len` first.
    pub(super) fn vec(&mut self, len: u64, what: &'static str) -> Result<Vec<u8>, SaveFileError> {
        let mut out = Vec::new();
        (&mut self.inner)
            .take(len)
            .read_to_end(&mut out)
            .map_err(SaveFileError::Io)?;
        let got = out.len() as u64;
        self.pos += got;
        if got < len {
            return Err(SaveFileError::Truncated { what });
        }
        if let Some(rec) = &mut self.record {
            rec.extend_from_slice(&out);
        }
        Ok(out)
    }

    /// Reads a u8 length and that many bytes into `buf`; returns the filled part.
    pub(super) fn short_str<'b>(
        &mut self,
        buf: &'b mut [u8; MAX_IDSTR_BYTES],
        what: &'static str,
    ) -> Result<&'b [u8], SaveFileError> {
        let len = usize::from(self.u8(what)?);
        let part = buf
            .get_mut(..len)
            .ok_or(SaveFileError::Truncated { what })?;
        self.exact(part, what)?;
        Ok(part)
    }

    /// Reads everything left, up to `limit + 1` bytes.
    pub(super) fn rest(&mut self, limit: u64) -> Result<Vec<u8>, SaveFileError> {
        let mut out = Vec::new();
        (&mut self.inner)
            .take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(SaveFileError::Io)?;
        self.pos += out.len() as u64;
        Ok(out)
    }
}

fn eof_is_truncation(e: io::Error, what: &'static str) -> SaveFileError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        SaveFileError::Truncated { what }
    } else {
        SaveFileError::Io(e)
    }
}

/// Parses the QEMU preamble (magic, version, optional configuration section with its
/// subsections) and returns the type byte of the first section after it. The caller
/// records the bytes if it needs them; the returned type byte is the last one read.
pub(super) fn read_preamble<R: Read>(input: &mut Input<R>) -> Result<u8, SaveFileError> {
    let magic = input.be32("qemu stream magic")?;
    if magic != QEVM_MAGIC {
        return Err(SaveFileError::BadQemuMagic { found: magic });
    }
    let version = input.be32("qemu stream version")?;
    if version != QEVM_VERSION {
        return Err(SaveFileError::UnsupportedVersion {
            what: "qemu migration stream",
            version,
        });
    }
    let mut type_byte = input.u8("section type")?;
    if type_byte != CONFIGURATION {
        // Machine types before QEMU 2.9's don't send the configuration section.
        return Ok(type_byte);
    }
    let len = input.be32("configuration section")?;
    if u64::from(len) > MAX_QEMU_CONFIG_BYTES {
        return Err(SaveFileError::TooLarge {
            what: "machine type name",
            size: u64::from(len),
            limit: MAX_QEMU_CONFIG_BYTES,
        });
    }
    input.vec(u64::from(len), "configuration section")?;
    loop {
        type_byte = input.u8("section type")?;
        if type_byte != SUBSECTION {
            return Ok(type_byte);
        }
        read_config_subsection(input)?;
    }
}

/// One subsection of the configuration section (its 0x05 byte already read).
fn read_config_subsection<R: Read>(input: &mut Input<R>) -> Result<(), SaveFileError> {
    const WHAT: &str = "configuration subsection";
    let offset = input.pos();
    let mut name_buf = [0u8; MAX_IDSTR_BYTES];
    let name = input.short_str(&mut name_buf, WHAT)?.to_vec();
    let version = input.be32(WHAT)?;
    if version != 1 {
        return Err(SaveFileError::UnsupportedVersion {
            what: WHAT,
            version,
        });
    }
    if name == SUB_TARGET_PAGE_BITS {
        let bits_offset = input.pos();
        if input.be32(WHAT)? != PAGE_BITS {
            return Err(SaveFileError::BadConfiguration {
                reason: "target page size is not 4 KiB",
                offset: bits_offset,
            });
        }
    } else if name == SUB_CAPABILITIES {
        // Only capabilities that change the stream format are listed here
        // (x-ignore-shared, mapped-ram): none is supported.
        let count = input.be32(WHAT)?;
        if count > 0 {
            let mut cap_buf = [0u8; MAX_IDSTR_BYTES];
            let cap = input.short_str(&mut cap_buf, WHAT)?;
            return Err(SaveFileError::UnsupportedCapability {
                name: String::from_utf8_lossy(cap).into_owned(),
            });
        }
    } else if name == SUB_UUID {
        let mut uuid = [0u8; 16];
        input.exact(&mut uuid, WHAT)?;
    } else {
        return Err(SaveFileError::UnknownSubsection {
            name: String::from_utf8_lossy(&name).into_owned(),
            offset,
        });
    }
    Ok(())
}

/// Reads a section footer and checks it closes `section_id`.
pub(super) fn read_footer<R: Read>(
    input: &mut Input<R>,
    section_id: u32,
) -> Result<(), SaveFileError> {
    let offset = input.pos();
    if input.u8("section footer")? != SECTION_FOOTER || input.be32("section footer")? != section_id
    {
        return Err(SaveFileError::BadFooter { section_id, offset });
    }
    Ok(())
}
