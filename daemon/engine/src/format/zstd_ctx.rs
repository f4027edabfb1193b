//! Segment (de)compression with one zstd context per thread. A fresh context per 1 MiB
//! segment costs an allocation and the clearing of ~1 MiB of match tables every time,
//! a tenth of the compression work; a reused one is reset cheaply.

use std::cell::RefCell;
use std::io;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Compresses `data` at `level` into one zstd frame.
// Only the encoder compresses; the format itself links without it.
#[cfg_attr(not(feature = "codec"), allow(dead_code))]
pub fn compress(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match &mut *slot {
            Some((l, c)) if *l == level => c,
            _ => &mut slot.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        compressor.compress(data)
    })
}

/// Decompresses one zstd frame of at most `capacity` bytes.
pub fn decompress(data: &[u8], capacity: usize) -> io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match &mut *slot {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress(data, capacity)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reused_contexts_round_trip_across_levels() {
        for (i, level) in [3, 3, 1, 19, 3].into_iter().enumerate() {
            let data: Vec<u8> = (0..100_000u32)
                .map(|j| (j % (7 + i as u32)) as u8)
                .collect();
            let c = super::compress(&data, level).expect("compresses");
            assert_eq!(
                super::decompress(&c, data.len()).expect("decompresses"),
                data
            );
            assert!(
                super::decompress(&c, data.len() - 1).is_err(),
                "capacity honoured"
            );
        }
    }
}
