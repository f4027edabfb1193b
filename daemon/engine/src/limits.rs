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
/// Largest decompressed overlay metadata accepted.
pub const MAX_OVERLAY_META_DECOMPRESSED_BYTES: u64 = 4 << 30;
/// Largest single compressed or decompressed segment accepted.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;
/// Largest VM disk accepted in overlay metadata (the synthesized qcow2 can address 8 TiB).
pub const MAX_DISK_BYTES: u64 = 8 << 40;
