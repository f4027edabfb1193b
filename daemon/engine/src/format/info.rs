//! What `info-overlay` shows: an overlay's base, sizes, counts per encoding and ratios.

use crate::chunk::{ImageKind, CHUNK_SIZE_U64};

use super::meta::{EncodingCounts, OverlayMeta};

/// Summary of one overlay.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OverlayInfo {
    /// Format version, "major.minor".
    pub format_version: String,
    /// Hex id of the base it applies to.
    pub base_id: String,
    /// Size of the overlay file.
    pub file_size: u64,
    /// Disk size of the VM.
    pub disk_size: u64,
    /// Guest RAM of the VM (0: disk-only overlay).
    pub memory_size: u64,
    /// Whether it carries a memory snapshot (else synthesis boots the disk).
    pub has_memory: bool,
    /// Memory pages per encoding.
    pub memory: EncodingCounts,
    /// Disk chunks per encoding.
    pub disk: EncodingCounts,
    /// Bytes of modified chunks it rebuilds (memory + disk).
    pub modified_bytes: u64,
    /// Payload bytes before compression.
    pub payload_uncompressed: u64,
    /// Payload bytes after compression.
    pub payload_compressed: u64,
    /// Payload segments.
    pub segments: u64,
    /// modified_bytes / file_size.
    pub compression_ratio: f64,
    /// Properties stored with the overlay.
    pub properties: Vec<(String, String)>,
}

impl OverlayMeta {
    /// The summary `info-overlay` shows, for a file of `file_size` bytes.
    pub fn info(&self, file_size: u64) -> OverlayInfo {
        let memory = self.counts(ImageKind::Memory);
        let disk = self.counts(ImageKind::Disk);
        let modified_bytes = (memory.modified() + disk.modified()) * CHUNK_SIZE_U64;
        OverlayInfo {
            format_version: format!("{}.{}", super::FORMAT_MAJOR, super::FORMAT_MINOR),
            base_id: crate::hex::encode(&self.base_id),
            file_size,
            disk_size: self.disk_size,
            memory_size: self.memory.as_ref().map_or(0, |m| m.layout.ram_bytes()),
            has_memory: self.memory.is_some(),
            memory,
            disk,
            modified_bytes,
            payload_uncompressed: self.payload_uncompressed_len(),
            payload_compressed: self.payload_len(),
            segments: self.segments.len() as u64,
            compression_ratio: if file_size == 0 {
                0.0
            } else {
                modified_bytes as f64 / file_size as f64
            },
            properties: self.properties.clone(),
        }
    }
}
