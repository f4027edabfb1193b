//! Every size cap the engine enforces on input it reads, in one place. A crafted or corrupt
//! file can claim any size; these bounds keep such claims from turning into huge allocations.

/// Largest libvirt XML area (domain XML + cookie + padding) accepted in a save file.
pub const MAX_SAVE_XML_BYTES: u64 = 16 << 20;
/// Largest device-state blob (everything after the RAM section) accepted in a save file.
pub const MAX_DEVICE_STATE_BYTES: u64 = 256 << 20;
/// Largest QEMU configuration section accepted (machine type name).
pub const MAX_QEMU_CONFIG_BYTES: u64 = 1 << 20;
/// Most RAM blocks accepted in a save file.
pub const MAX_RAM_BLOCKS: usize = 4096;
/// Largest guest RAM accepted (sum of RAM block lengths).
pub const MAX_RAM_BYTES: u64 = 1 << 40;
/// Largest compressed overlay metadata section accepted.
pub const MAX_OVERLAY_META_BYTES: u64 = 1 << 30;
/// Largest decompressed overlay metadata accepted, whatever the layout (checked against the
/// header before anything is decompressed). [`MAX_OVERLAY_RECORDS`] records with a stored
/// hash take ~36 bytes each (~600 MiB); the rest is the device state and the layout.
pub const MAX_OVERLAY_META_DECOMPRESSED_BYTES: u64 = 1 << 30;
/// Most records an overlay may hold, whatever its layout allows: 64 GiB of modified
/// chunks. Each parsed record takes 64 bytes, so the table then holds at most 1 GiB.
pub const MAX_OVERLAY_RECORDS: u64 = 1 << 24;
/// Largest save-file layout blob accepted in overlay metadata: the XML area, the QEMU
/// preamble and the RAM block table, each within its own cap above.
pub const MAX_OVERLAY_LAYOUT_BYTES: u64 = 32 << 20;
/// Metadata bytes allowed beyond what the layout and the record bound account for:
/// properties, and fields a newer minor version appends.
pub const OVERLAY_META_SLACK_BYTES: u64 = 16 << 20;
/// Largest single compressed or decompressed segment accepted.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;
/// Largest VM disk accepted in overlay metadata (the synthesized qcow2 can address 8 TiB).
pub const MAX_DISK_BYTES: u64 = 8 << 40;
