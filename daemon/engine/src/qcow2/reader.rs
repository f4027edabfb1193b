//! Read-only access to the top layer of a qcow2 image.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::cursor::Cursor;

use super::{
    push_extent, table_entries, to_usize, Extent, ExtentKind, Qcow2Error, EXT_BACKING_FORMAT,
    EXT_END, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_EXTENDED_L2, INCOMPAT_KNOWN, MAGIC,
    MAX_BACKING_NAME_BYTES, MAX_CLUSTER_BITS, MAX_L1_BYTES, MIN_CLUSTER_BITS, OFFSET_MASK,
    OFLAG_COMPRESSED, OFLAG_ZERO, V2_HEADER_LEN, V3_HEADER_LEN,
};

/// A qcow2 image opened read-only. It reports and reads only what the image itself defines;
/// the backing chain is not followed. Reads use positional I/O, so a `&Qcow2Image` can be
/// shared between threads.
#[derive(Debug)]
pub struct Qcow2Image {
    file: File,
    /// File length at open; every offset read from the file is checked against it.
    file_len: u64,
    version: u32,
    cluster_bits: u32,
    virtual_size: u64,
    backing_file: Option<String>,
    backing_format: Option<String>,
    /// Host offsets of the L2 tables (0: none), one per L1 entry covering the virtual size.
    l1: Vec<u64>,
}

/// What one guest cluster maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cluster {
    /// Not defined here: reads go to the backing file.
    Unallocated,
    /// Reads as zeros.
    Zero,
    /// Data at this host offset.
    Data(u64),
}

impl Qcow2Image {
    /// Opens `path`: reads and validates the header (versions 2 and 3), the backing file name
    /// and format, and the L1 table, checking every offset against the file size. Refuses
    /// images using encryption, external data files, extended L2 entries or unknown
    /// incompatible features.
    pub fn open(path: &Path) -> Result<Self, Qcow2Error> {
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        Self::from_file(file, file_len)
    }

    fn from_file(file: File, file_len: u64) -> Result<Self, Qcow2Error> {
        let truncated = || Qcow2Error::corrupt("file ends inside the header");

        // The fixed part of the header (version 3 size; version 2 uses the first 72 bytes).
        let mut fixed = [0u8; V3_HEADER_LEN as usize];
        let available = usize::try_from(file_len.min(u64::from(V3_HEADER_LEN)))
            .unwrap_or(fixed.len())
            .min(fixed.len());
        let (head, _) = fixed.split_at_mut(available);
        file.read_exact_at(head, 0)?;
        if !fixed.starts_with(&MAGIC) {
            return Err(Qcow2Error::NotQcow2);
        }
        let u32_at = |at: usize| Cursor::at(&fixed, at).u32_be().map_err(|_| truncated());
        let u64_at = |at: usize| Cursor::at(&fixed, at).u64_be().map_err(|_| truncated());
        if available < 8 {
            return Err(truncated());
        }
        let version = u32_at(4)?;
        let min_header_len = match version {
            2 => V2_HEADER_LEN,
            3 => V3_HEADER_LEN,
            other => return Err(Qcow2Error::UnsupportedVersion(other)),
        };
        if available < to_usize(u64::from(min_header_len), "header")? {
            return Err(truncated());
        }
        let backing_file_offset = u64_at(8)?;
        let backing_file_size = u32_at(16)?;
        let cluster_bits = u32_at(20)?;
        let virtual_size = u64_at(24)?;
        let crypt_method = u32_at(32)?;
        let l1_size = u32_at(36)?;
        let l1_table_offset = u64_at(40)?;
        let (incompatible, refcount_order, header_length) = if version >= 3 {
            (u64_at(72)?, u32_at(96)?, u32_at(100)?)
        } else {
            (0, 4, V2_HEADER_LEN)
        };

        if cluster_bits < MIN_CLUSTER_BITS {
            return Err(Qcow2Error::corrupt(format!(
                "cluster_bits {cluster_bits} is below {MIN_CLUSTER_BITS}"
            )));
        }
        if cluster_bits > MAX_CLUSTER_BITS {
            return Err(Qcow2Error::Unsupported {
                feature: "cluster size above 2 MiB",
            });
        }
        let cluster_size = 1u64 << cluster_bits;
        if header_length < min_header_len
            || header_length % 8 != 0
            || u64::from(header_length) > cluster_size
        {
            return Err(Qcow2Error::corrupt(format!(
                "invalid header length {header_length}"
            )));
        }
        if u64::from(header_length) > file_len {
            return Err(truncated());
        }
        if crypt_method != 0 {
            return Err(Qcow2Error::Unsupported {
                feature: "encryption",
            });
        }
        if incompatible & !INCOMPAT_KNOWN != 0 {
            return Err(Qcow2Error::Unsupported {
                feature: "unknown incompatible feature bits",
            });
        }
        if incompatible & INCOMPAT_CORRUPT != 0 {
            return Err(Qcow2Error::corrupt("the image is flagged corrupt"));
        }
        if incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(Qcow2Error::Unsupported {
                feature: "external data file",
            });
        }
        if incompatible & INCOMPAT_EXTENDED_L2 != 0 {
            return Err(Qcow2Error::Unsupported {
                feature: "extended l2 entries",
            });
        }
        if refcount_order > 6 {
            return Err(Qcow2Error::corrupt(format!(
                "refcount_order {refcount_order} is above 6"
            )));
        }

        // The header cluster: extensions and the backing file name live here.
        let mut header_cluster = vec![0u8; to_usize(cluster_size.min(file_len), "header")?];
        file.read_exact_at(&mut header_cluster, 0)?;
        let backing_file = read_backing_file_name(
            &header_cluster,
            backing_file_offset,
            backing_file_size,
            cluster_size,
        )?;
        let extensions_end = if backing_file_offset == 0 {
            cluster_size
        } else {
            backing_file_offset.min(cluster_size)
        };
        let backing_format =
            read_backing_format(&header_cluster, u64::from(header_length), extensions_end)?;

        // The L1 table: only the entries that cover the virtual size are kept.
        let l2_bits = cluster_bits - 3;
        let bytes_per_l2 = 1u64 << (cluster_bits + l2_bits);
        let needed = virtual_size.div_ceil(bytes_per_l2);
        if u64::from(l1_size).saturating_mul(8) > MAX_L1_BYTES {
            return Err(Qcow2Error::Unsupported {
                feature: "l1 table larger than 32 MiB",
            });
        }
        if needed > u64::from(l1_size) {
            return Err(Qcow2Error::corrupt(format!(
                "l1 table of {l1_size} entries is too small for virtual size {virtual_size}"
            )));
        }
        let mut l1 = Vec::new();
        if needed > 0 {
            if l1_table_offset % cluster_size != 0 {
                return Err(Qcow2Error::corrupt(
                    "l1 table offset is not cluster-aligned",
                ));
            }
            if l1_table_offset < cluster_size {
                return Err(Qcow2Error::corrupt("l1 table overlaps the header"));
            }
            let l1_bytes = needed * 8;
            if l1_table_offset
                .checked_add(l1_bytes)
                .is_none_or(|end| end > file_len)
            {
                return Err(Qcow2Error::corrupt(
                    "l1 table lies beyond the end of the file",
                ));
            }
            let mut raw = vec![0u8; to_usize(l1_bytes, "l1 table")?];
            file.read_exact_at(&mut raw, l1_table_offset)?;
            l1.reserve_exact(raw.len() / 8);
            for (index, entry) in table_entries(&raw).enumerate() {
                let l2_offset = entry & OFFSET_MASK;
                if l2_offset != 0 {
                    if l2_offset % cluster_size != 0 {
                        return Err(Qcow2Error::corrupt(format!(
                            "l2 table {index} is not cluster-aligned"
                        )));
                    }
                    if l2_offset
                        .checked_add(cluster_size)
                        .is_none_or(|end| end > file_len)
                    {
                        return Err(Qcow2Error::corrupt(format!(
                            "l2 table {index} lies beyond the end of the file"
                        )));
                    }
                }
                l1.push(l2_offset);
            }
        }

        Ok(Qcow2Image {
            file,
            file_len,
            version,
            cluster_bits,
            virtual_size,
            backing_file,
            backing_format,
            l1,
        })
    }

    /// Size of the virtual disk in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// Cluster size in bytes (512 B to 2 MiB).
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Format version: 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The backing file name as stored in the header (not resolved against the image's
    /// directory), if the image has one.
    pub fn backing_file(&self) -> Option<&str> {
        self.backing_file.as_deref()
    }

    /// The backing file format from the header extension (e.g. "raw"), if present.
    pub fn backing_format(&self) -> Option<&str> {
        self.backing_format.as_deref()
    }

    /// Guest ranges defined by this image itself (depth 0), sorted, adjacent ranges of the same
    /// kind merged: allocated data clusters ([`ExtentKind::Data`]) and clusters marked zero
    /// ([`ExtentKind::Zero`]). Ranges not listed fall through to the backing file. The last
    /// extent is clipped to the virtual size. Reads one L2 table at a time.
    pub fn top_layer_extents(&self) -> Result<Vec<Extent>, Qcow2Error> {
        let cluster_size = self.cluster_size();
        let mut extents = Vec::new();
        let mut table = vec![0u8; to_usize(cluster_size, "cluster")?];
        let mut guest = 0u64;
        for &l2_offset in &self.l1 {
            let region_start = guest;
            guest = guest.saturating_add(cluster_size << (self.cluster_bits - 3));
            if l2_offset == 0 {
                continue;
            }
            self.file.read_exact_at(&mut table, l2_offset)?;
            let mut offset = region_start;
            for entry in table_entries(&table) {
                if offset >= self.virtual_size {
                    break;
                }
                let kind = match self.classify(entry, offset)? {
                    Cluster::Unallocated => None,
                    Cluster::Zero => Some(ExtentKind::Zero),
                    Cluster::Data(_) => Some(ExtentKind::Data),
                };
                let length = cluster_size.min(self.virtual_size - offset);
                if let Some(kind) = kind {
                    push_extent(
                        &mut extents,
                        Extent {
                            offset,
                            length,
                            kind,
                        },
                    );
                }
                offset += length;
            }
        }
        Ok(extents)
    }

    /// Reads guest bytes `[offset, offset + buf.len())`, which must lie within ranges returned
    /// by [`Qcow2Image::top_layer_extents`]: data clusters are read from the file, zero clusters
    /// read as zeros. Touching an unallocated cluster is [`Qcow2Error::Unallocated`] (the
    /// backing file is not followed); reading past the virtual size is
    /// [`Qcow2Error::OutOfRange`].
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Qcow2Error> {
        let length = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        let out_of_range = Qcow2Error::OutOfRange {
            offset,
            length,
            virtual_size: self.virtual_size,
        };
        let Some(end) = offset
            .checked_add(length)
            .filter(|&end| end <= self.virtual_size)
        else {
            return Err(out_of_range);
        };
        let cluster_size = self.cluster_size();
        let mut rest = buf;
        let mut position = offset;
        while position < end {
            let within = position & (cluster_size - 1);
            let piece_len = (cluster_size - within).min(end - position);
            let split = to_usize(piece_len, "read")?.min(rest.len());
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut(split);
            rest = tail;
            match self.cluster_at(position)? {
                Cluster::Unallocated => return Err(Qcow2Error::Unallocated { offset: position }),
                Cluster::Zero => piece.fill(0),
                Cluster::Data(host) => self.read_padded(host + within, piece)?,
            }
            position += piece_len;
        }
        Ok(())
    }

    /// Maps the guest cluster containing `guest` (which is below the virtual size).
    fn cluster_at(&self, guest: u64) -> Result<Cluster, Qcow2Error> {
        let cluster_index = guest >> self.cluster_bits;
        let l2_bits = self.cluster_bits - 3;
        let l2_offset = usize::try_from(cluster_index >> l2_bits)
            .ok()
            .and_then(|index| self.l1.get(index))
            .copied()
            .unwrap_or(0);
        if l2_offset == 0 {
            return Ok(Cluster::Unallocated);
        }
        let index_in_table = cluster_index & ((1 << l2_bits) - 1);
        let mut entry = [0u8; 8];
        // The whole L2 table was checked to lie inside the file at open.
        self.file
            .read_exact_at(&mut entry, l2_offset + index_in_table * 8)?;
        self.classify(u64::from_be_bytes(entry), guest)
    }

    /// Interprets an L2 entry for the cluster at guest offset `guest`.
    fn classify(&self, entry: u64, guest: u64) -> Result<Cluster, Qcow2Error> {
        if entry & OFLAG_COMPRESSED != 0 {
            return Err(Qcow2Error::Unsupported {
                feature: "compressed clusters",
            });
        }
        let cluster_size = self.cluster_size();
        let host = entry & OFFSET_MASK;
        if host % cluster_size != 0 {
            return Err(Qcow2Error::corrupt(format!(
                "cluster at guest offset {guest} maps to unaligned host offset {host}"
            )));
        }
        if entry & OFLAG_ZERO != 0 {
            if self.version < 3 {
                return Err(Qcow2Error::corrupt(format!(
                    "zero flag at guest offset {guest} in a version 2 image"
                )));
            }
            return Ok(Cluster::Zero);
        }
        if host == 0 {
            return Ok(Cluster::Unallocated);
        }
        if host >= self.file_len {
            return Err(Qcow2Error::corrupt(format!(
                "cluster at guest offset {guest} maps beyond the end of the file"
            )));
        }
        Ok(Cluster::Data(host))
    }

    /// Reads `buf.len()` bytes at host offset `host`; bytes past the end of the file read as
    /// zeros, as QEMU does.
    fn read_padded(&self, host: u64, buf: &mut [u8]) -> Result<(), Qcow2Error> {
        let available = usize::try_from(self.file_len.saturating_sub(host))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (present, missing) = buf.split_at_mut(available);
        self.file.read_exact_at(present, host)?;
        missing.fill(0);
        Ok(())
    }
}

/// The backing file name stored at `offset` (`size` bytes) inside the header cluster.
fn read_backing_file_name(
    header_cluster: &[u8],
    offset: u64,
    size: u32,
    cluster_size: u64,
) -> Result<Option<String>, Qcow2Error> {
    if offset == 0 || size == 0 {
        return Ok(None);
    }
    let size = u64::from(size);
    if size > MAX_BACKING_NAME_BYTES as u64 {
        return Err(Qcow2Error::corrupt(format!(
            "backing file name of {size} bytes is longer than {MAX_BACKING_NAME_BYTES}"
        )));
    }
    if offset.saturating_add(size) > cluster_size {
        return Err(Qcow2Error::corrupt(
            "backing file name lies outside the header cluster",
        ));
    }
    let start = to_usize(offset, "backing file name offset")?;
    let bytes = header_cluster
        .get(start..start + to_usize(size, "backing file name")?)
        .ok_or_else(|| Qcow2Error::corrupt("file ends inside the backing file name"))?;
    String::from_utf8(bytes.to_vec())
        .map(Some)
        .map_err(|_| Qcow2Error::Unsupported {
            feature: "non-utf-8 backing file name",
        })
}

/// Walks the header extensions in `[start, end)` of the header cluster and returns the
/// backing format, if one is present.
fn read_backing_format(
    header_cluster: &[u8],
    start: u64,
    end: u64,
) -> Result<Option<String>, Qcow2Error> {
    let end = end.min(u64::try_from(header_cluster.len()).unwrap_or(u64::MAX));
    let mut position = start;
    let mut format = None;
    while position.saturating_add(8) <= end {
        let at = to_usize(position, "header extension offset")?;
        let mut fields = Cursor::at(header_cluster, at);
        let (Ok(kind), Ok(length)) = (fields.u32_be(), fields.u32_be()) else {
            break;
        };
        position += 8;
        if kind == EXT_END {
            break;
        }
        let length = u64::from(length);
        if length > end - position {
            return Err(Qcow2Error::corrupt(format!(
                "header extension {kind:#010x} overruns the header area"
            )));
        }
        if kind == EXT_BACKING_FORMAT {
            let data_start = to_usize(position, "header extension offset")?;
            let bytes = header_cluster
                .get(data_start..data_start + to_usize(length, "header extension")?)
                .ok_or_else(|| Qcow2Error::corrupt("file ends inside a header extension"))?;
            let name = String::from_utf8(bytes.to_vec()).map_err(|_| Qcow2Error::Unsupported {
                feature: "non-utf-8 backing format name",
            })?;
            format = Some(name);
        }
        position = position.saturating_add(length.next_multiple_of(8));
    }
    Ok(format)
}
