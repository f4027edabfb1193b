//! [`SaveFileReader`]: streams a save file into its layout, its pages and its device state.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use super::layout::{check_block, check_libvirt_version, check_ram_total, check_xml_area};
use super::wire::{
    bad_flags, read_footer, read_preamble, Input, FLAG_CONTINUE, FLAG_EOS, FLAG_MASK,
    FLAG_MEM_SIZE, FLAG_PAGE, FLAG_ZERO, LIBVIRT_MAGIC, LIBVIRT_PARTIAL_MAGIC,
    LIBVIRT_UNUSED_WORDS, MAX_IDSTR_BYTES, RAM_IDSTR, RAM_VERSION, SECTION_END, SECTION_PART,
    SECTION_START,
};
use super::{RamBlock, SaveFileError, SaveFileLayout};
use crate::chunk::{Chunk, CHUNK_SIZE_BYTES, CHUNK_SIZE_U64};
use crate::limits::{MAX_DEVICE_STATE_BYTES, MAX_QEMU_CONFIG_BYTES, MAX_RAM_BLOCKS};

/// Where the reader is in the ram section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After a footer: a PART or END header comes next.
    BetweenSections,
    /// Inside a PART (`end == false`) or END section: records come next.
    InSection { end: bool },
    /// After the END section's footer.
    Done,
}

/// Streaming parser of a save file.
///
/// [`open`](Self::open) reads everything up to the ram section's block list; then
/// [`next_page`](Self::next_page) yields pages one at a time, in stream order, and
/// [`finish`](Self::finish) returns the device state. Pages never sent are not reported:
/// QEMU leaves them zero on restore, and so should the caller. Reads are small (a record
/// header, a name, a page), so pass a `BufReader`.
pub struct SaveFileReader<R: Read> {
    input: Input<R>,
    layout: SaveFileLayout,
    /// Global index of each block's first page.
    first_pages: Vec<u64>,
    /// Block index by name.
    by_name: HashMap<Vec<u8>, usize>,
    /// One bit per global page: already read.
    seen: Vec<u64>,
    /// Whether a page may come again (QEMU's loader takes the later copy; a save file
    /// QEMU writes has none, so the encoder refuses them).
    repeats: bool,
    pages_read: u64,
    /// Block of the last page record (CONTINUE refers to it, across sections too).
    last_block: Option<usize>,
    state: State,
}

impl<R: Read> SaveFileReader<R> {
    /// Parses the libvirt header, the XML area, the QEVM preamble and configuration, and
    /// the ram START section (MEM_SIZE, block list, EOS, footer).
    pub fn open(reader: R) -> Result<Self, SaveFileError> {
        let mut input = Input::new(reader);

        let mut magic = [0u8; 16];
        input.exact(&mut magic, "libvirt header")?;
        if &magic == LIBVIRT_PARTIAL_MAGIC {
            return Err(SaveFileError::Incomplete);
        }
        if &magic != LIBVIRT_MAGIC {
            return Err(SaveFileError::BadMagic);
        }
        let libvirt_version = input.le32("libvirt header")?;
        check_libvirt_version(libvirt_version)?;
        let data_len = input.le32("libvirt header")?;
        let was_running = input.le32("libvirt header")?;
        let format = input.le32("libvirt header")?;
        if format != 0 {
            return Err(SaveFileError::Compressed { format });
        }
        let cookie_offset = input.le32("libvirt header")?;
        for _ in 0..LIBVIRT_UNUSED_WORDS {
            input.le32("libvirt header")?;
        }
        check_xml_area(u64::from(data_len), cookie_offset)?;
        let xml_area = input.vec(u64::from(data_len), "xml area")?;

        input.start_recording();
        let preamble_result = read_preamble(&mut input);
        let mut qemu_preamble = input.take_recording();
        let type_offset = input.pos().saturating_sub(1);
        let type_byte = preamble_result?;
        // The last byte read is the first section's type, not part of the preamble.
        qemu_preamble.pop();
        if qemu_preamble.len() as u64 > MAX_QEMU_CONFIG_BYTES {
            return Err(SaveFileError::TooLarge {
                what: "qemu preamble",
                size: qemu_preamble.len() as u64,
                limit: MAX_QEMU_CONFIG_BYTES,
            });
        }
        if type_byte != SECTION_START {
            return Err(SaveFileError::UnexpectedSection {
                type_byte,
                offset: type_offset,
            });
        }

        let ram_section_id = input.be32("ram section header")?;
        let idstr_offset = input.pos();
        let mut name_buf = [0u8; MAX_IDSTR_BYTES];
        let idstr = input.short_str(&mut name_buf, "ram section header")?;
        if idstr != RAM_IDSTR {
            return Err(SaveFileError::NotRamSection {
                idstr: String::from_utf8_lossy(idstr).into_owned(),
                offset: idstr_offset,
            });
        }
        let ram_instance_id = input.be32("ram section header")?;
        let ram_version_id = input.be32("ram section header")?;
        if ram_version_id != RAM_VERSION {
            return Err(SaveFileError::UnsupportedVersion {
                what: "ram section",
                version: ram_version_id,
            });
        }

        let blocks = read_block_list(&mut input)?;
        let eos_offset = input.pos();
        let eos = input.be64("ram section")?;
        if eos != FLAG_EOS {
            return Err(bad_flags(eos & FLAG_MASK, eos_offset));
        }
        read_footer(&mut input, ram_section_id)?;

        let layout = SaveFileLayout {
            libvirt_version,
            was_running,
            xml_area,
            cookie_offset,
            qemu_preamble,
            ram_section_id,
            ram_instance_id,
            ram_version_id,
            blocks,
        };
        layout.domain_xml()?;

        let mut first_pages = Vec::with_capacity(layout.blocks.len());
        let mut by_name = HashMap::with_capacity(layout.blocks.len());
        let mut next_first = 0u64;
        for (i, block) in layout.blocks.iter().enumerate() {
            first_pages.push(next_first);
            next_first += block.length / CHUNK_SIZE_U64;
            by_name.insert(block.name.as_bytes().to_vec(), i);
        }
        // At most MAX_RAM_BYTES / 4096 / 64 words (32 MiB for 1 TiB of RAM).
        let words =
            usize::try_from(next_first.div_ceil(64)).map_err(|_| SaveFileError::TooLarge {
                what: "guest ram",
                size: layout.ram_bytes(),
                limit: crate::limits::MAX_RAM_BYTES,
            })?;

        Ok(SaveFileReader {
            input,
            layout,
            first_pages,
            by_name,
            seen: vec![0; words],
            repeats: false,
            pages_read: 0,
            last_block: None,
            state: State::BetweenSections,
        })
    }

    /// Reads a page sent again, as QEMU's loader does (a primed restore stream sends the
    /// overlay's pages over the base's).
    #[cfg(test)]
    pub(crate) fn allowing_repeats(mut self) -> Self {
        self.repeats = true;
        self
    }

    /// Everything but the pages and the device state.
    pub fn layout(&self) -> &SaveFileLayout {
        &self.layout
    }

    /// Pages returned by [`next_page`](Self::next_page) so far.
    pub fn pages_read(&self) -> u64 {
        self.pages_read
    }

    /// Byte offset in the file of the next byte to be read.
    pub fn offset(&self) -> u64 {
        self.input.pos()
    }

    /// The next page of the ram section, in stream order: fills `buf` (a ZERO record with
    /// its fill byte) and returns the page's global index; `Ok(None)` after the ram END
    /// section's EOS and footer. Any section other than a ram PART or END before that is
    /// an error, and so is a page sent twice.
    pub fn next_page(&mut self, buf: &mut Chunk) -> Result<Option<u64>, SaveFileError> {
        Ok(self.next_page_sparse(buf)?.map(|(index, zero)| {
            if zero {
                buf.fill(0);
            }
            index
        }))
    }

    /// Like [`Self::next_page`], but a page sent as a ZERO record with fill byte 0 leaves
    /// `buf` as it was and is returned with `true`: most of a guest's memory is such
    /// pages, and writing and then scanning 4 KiB of zeros for each was a good part of an
    /// encode's work.
    pub fn next_page_sparse(
        &mut self,
        buf: &mut Chunk,
    ) -> Result<Option<(u64, bool)>, SaveFileError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::BetweenSections => {
                    let offset = self.input.pos();
                    let type_byte = self.input.u8("section header")?;
                    if type_byte != SECTION_PART && type_byte != SECTION_END {
                        return Err(SaveFileError::UnexpectedSection { type_byte, offset });
                    }
                    let id_offset = self.input.pos();
                    let id = self.input.be32("section header")?;
                    if id != self.layout.ram_section_id {
                        return Err(SaveFileError::WrongSectionId {
                            expected: self.layout.ram_section_id,
                            found: id,
                            offset: id_offset,
                        });
                    }
                    self.state = State::InSection {
                        end: type_byte == SECTION_END,
                    };
                }
                State::InSection { end } => {
                    let offset = self.input.pos();
                    let header = self.input.be64("ram record")?;
                    let flags = header & FLAG_MASK;
                    if flags == FLAG_EOS {
                        read_footer(&mut self.input, self.layout.ram_section_id)?;
                        self.state = if end {
                            State::Done
                        } else {
                            State::BetweenSections
                        };
                        continue;
                    }
                    let kind = flags & !FLAG_CONTINUE;
                    if kind != FLAG_ZERO && kind != FLAG_PAGE {
                        return Err(bad_flags(flags, offset));
                    }
                    let index = self.page_index(header & !FLAG_MASK, flags, offset)?;
                    let mut zero = false;
                    if kind == FLAG_ZERO {
                        let fill = self.input.u8("zero page record")?;
                        if fill == 0 {
                            zero = true;
                        } else {
                            buf.fill(fill);
                        }
                    } else {
                        self.input.exact(buf, "page data")?;
                    }
                    self.pages_read += 1;
                    return Ok(Some((index, zero)));
                }
            }
        }
    }

    /// Resolves a page record's block (reading its name unless CONTINUE) and address to
    /// a global page index, refusing pages out of range or seen before.
    fn page_index(&mut self, address: u64, flags: u64, offset: u64) -> Result<u64, SaveFileError> {
        let block = if flags & FLAG_CONTINUE != 0 {
            self.last_block
                .ok_or(SaveFileError::ContinueWithoutBlock { offset })?
        } else {
            let mut name_buf = [0u8; MAX_IDSTR_BYTES];
            let name = self
                .input
                .short_str(&mut name_buf, "ram record block name")?;
            *self
                .by_name
                .get(name)
                .ok_or_else(|| SaveFileError::BadBlock {
                    name: String::from_utf8_lossy(name).into_owned(),
                })?
        };
        self.last_block = Some(block);
        let (info, first) = self
            .layout
            .blocks
            .get(block)
            .zip(self.first_pages.get(block))
            .ok_or(SaveFileError::ContinueWithoutBlock { offset })?;
        if address >= info.length {
            return Err(SaveFileError::AddressOutOfRange {
                block: info.name.clone(),
                address,
                length: info.length,
                offset,
            });
        }
        let index = first + address / CHUNK_SIZE_U64;
        let word = usize::try_from(index / 64)
            .ok()
            .and_then(|w| self.seen.get_mut(w))
            .ok_or(SaveFileError::PageOutOfRange {
                index,
                pages: self.layout.page_count(),
            })?;
        let bit = 1u64 << (index % 64);
        if *word & bit != 0 && !self.repeats {
            return Err(SaveFileError::DuplicatePage { index });
        }
        *word |= bit;
        Ok(index)
    }

    /// Reads the rest of the file as the opaque device-state blob (at most
    /// [`MAX_DEVICE_STATE_BYTES`]). Pages not yet read are read (and checked) first.
    pub fn finish(mut self) -> Result<Vec<u8>, SaveFileError> {
        let mut scratch = [0u8; CHUNK_SIZE_BYTES];
        while self.next_page(&mut scratch)?.is_some() {}
        let blob = self.input.rest(MAX_DEVICE_STATE_BYTES)?;
        if blob.len() as u64 > MAX_DEVICE_STATE_BYTES {
            return Err(SaveFileError::TooLarge {
                what: "device state",
                size: blob.len() as u64,
                limit: MAX_DEVICE_STATE_BYTES,
            });
        }
        if blob.is_empty() {
            return Err(SaveFileError::EmptyDeviceState);
        }
        Ok(blob)
    }

    /// The underlying reader, positioned wherever parsing stopped.
    pub fn into_inner(self) -> R {
        self.input.into_inner()
    }
}

/// The MEM_SIZE record and the block list that follows it, up to the total it announces.
fn read_block_list<R: Read>(input: &mut Input<R>) -> Result<Vec<RamBlock>, SaveFileError> {
    let offset = input.pos();
    let header = input.be64("ram section")?;
    if header & FLAG_MASK != FLAG_MEM_SIZE {
        return Err(bad_flags(header & FLAG_MASK, offset));
    }
    let total = header & !FLAG_MASK;
    check_ram_total(total)?;
    let mut blocks: Vec<RamBlock> = Vec::new();
    let mut names = HashSet::new();
    let mut sum = 0u64;
    while sum < total {
        if blocks.len() >= MAX_RAM_BLOCKS {
            return Err(SaveFileError::TooLarge {
                what: "ram block count",
                size: blocks.len() as u64 + 1,
                limit: MAX_RAM_BLOCKS as u64,
            });
        }
        let name_offset = input.pos();
        let mut name_buf = [0u8; MAX_IDSTR_BYTES];
        let name_bytes = input.short_str(&mut name_buf, "ram block list")?;
        let name = std::str::from_utf8(name_bytes)
            .ok()
            .filter(|n| !n.is_empty())
            .ok_or(SaveFileError::BadBlockName {
                offset: name_offset,
            })?
            .to_owned();
        let length = input.be64("ram block list")?;
        check_block(&name, length)?;
        if length > total - sum {
            return Err(SaveFileError::SizeMismatch {
                what: "ram block lengths vs MEM_SIZE",
                expected: total,
                found: sum.saturating_add(length),
            });
        }
        if !names.insert(name.clone()) {
            return Err(SaveFileError::DuplicateBlock { name });
        }
        sum += length;
        blocks.push(RamBlock { name, length });
    }
    Ok(blocks)
}
