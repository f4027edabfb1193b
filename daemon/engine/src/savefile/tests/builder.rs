//! The test-only save file builder: writes the documented layout by hand (records
//! shuffled, spread over several PARTs and the END, CONTINUE mixed with named records),
//! independently of [`SaveFileWriter`], plus read/write helpers.

use std::collections::BTreeMap;

use crate::chunk::{Chunk, CHUNK_SIZE_BYTES};
use crate::savefile::*;

pub(super) const SECTION_ID: u32 = 2;
pub(super) const MACHINE: &[u8] = b"pc-i440fx-7.2";
pub(super) const XML: &str =
    "<domain type='kvm'><name>vm</name><memory unit='KiB'>96</memory></domain>";
pub(super) const COOKIE: &str = "<cookie><cpu mode='host-model'/></cookie>";

/// What a page record carries.
#[derive(Clone, Debug)]
pub(super) enum Data {
    Zero(u8),
    Page(Box<Chunk>),
}

/// One ram record as the builder writes it.
#[derive(Clone, Debug)]
pub(super) struct Record {
    /// Block name written when `cont` is false.
    pub(super) block: String,
    pub(super) address: u64,
    /// Extra flag bits or'ed into the header.
    pub(super) extra_flags: u64,
    pub(super) cont: bool,
    pub(super) data: Data,
}

#[derive(Clone)]
pub(super) struct Spec {
    pub(super) magic: [u8; 16],
    pub(super) libvirt_version: u32,
    pub(super) compressed: u32,
    pub(super) xml: String,
    pub(super) cookie: Option<String>,
    pub(super) padding: usize,
    /// Overrides `data_len` in the header.
    pub(super) data_len: Option<u32>,
    pub(super) preamble: Vec<u8>,
    pub(super) first_section_type: u8,
    pub(super) ram_idstr: String,
    pub(super) ram_version: u32,
    pub(super) blocks: Vec<(String, u64)>,
    pub(super) mem_size: Option<u64>,
    /// Records of START (after the block list, before EOS): normally none.
    pub(super) start_extra: Vec<u8>,
    /// Number of PART sections; records are spread over them and the END.
    pub(super) parts: usize,
    pub(super) part_section_id: u32,
    pub(super) footer_id: u32,
    /// Raw bytes inserted just before the END section.
    pub(super) before_end: Vec<u8>,
    pub(super) device_state: Vec<u8>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            magic: *b"LibvirtQemudSave",
            libvirt_version: 2,
            compressed: 0,
            xml: XML.to_owned(),
            cookie: Some(COOKIE.to_owned()),
            padding: 100,
            data_len: None,
            preamble: preamble(&[]),
            first_section_type: 0x01,
            ram_idstr: "ram".to_owned(),
            ram_version: 4,
            blocks: vec![
                ("pc.ram".to_owned(), 24 * 4096),
                ("pc.bios".to_owned(), 4 * 4096),
                ("vga.vram".to_owned(), 8 * 4096),
            ],
            mem_size: None,
            start_extra: Vec::new(),
            parts: 3,
            part_section_id: SECTION_ID,
            footer_id: SECTION_ID,
            before_end: Vec::new(),
            device_state: device_state(),
        }
    }
}

pub(super) fn preamble(subsections: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&0x5145_564d_u32.to_be_bytes());
    p.extend_from_slice(&3u32.to_be_bytes());
    p.push(0x07);
    p.extend_from_slice(&u32::try_from(MACHINE.len()).unwrap().to_be_bytes());
    p.extend_from_slice(MACHINE);
    p.extend_from_slice(subsections);
    p
}

pub(super) fn subsection(name: &str, fields: &[u8]) -> Vec<u8> {
    let mut s = vec![0x05, u8::try_from(name.len()).unwrap()];
    s.extend_from_slice(name.as_bytes());
    s.extend_from_slice(&1u32.to_be_bytes());
    s.extend_from_slice(fields);
    s
}

/// Opaque device state: a FULL section, QEMU's EOF and a JSON description.
pub(super) fn device_state() -> Vec<u8> {
    let mut d = vec![0x04, 0, 0, 0, 3, 5];
    d.extend_from_slice(b"timer");
    d.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]);
    d.extend((0..3000u32).map(|i| u8::try_from(i % 7).unwrap()));
    d.extend_from_slice(&[0x7e, 0, 0, 0, 3, 0x00, 0x06]);
    let json = br#"{"page_size": 4096, "devices": []}"#;
    d.extend_from_slice(&u32::try_from(json.len()).unwrap().to_be_bytes());
    d.extend_from_slice(json);
    d
}

/// A recognisable, never-all-zero page.
pub(super) fn pattern(global: u64) -> Chunk {
    let mut c = [0u8; CHUNK_SIZE_BYTES];
    for (i, b) in (0u64..).zip(c.iter_mut()) {
        *b = u8::try_from((global * 131 + i * 7) % 251 + 1).unwrap();
    }
    c
}

/// What the builder sends for each global page: zero pages (as ZERO records), pages
/// filled with 0x55 (as ZERO records with fill byte 0x55), one page with a single
/// non-zero byte, and patterned pages.
pub(super) fn content(global: u64) -> Data {
    if global == 7 {
        let mut c = [0u8; CHUNK_SIZE_BYTES];
        c[CHUNK_SIZE_BYTES - 1] = 9;
        return Data::Page(Box::new(c));
    }
    match global % 5 {
        0 => Data::Zero(0),
        3 if global % 2 == 1 => Data::Zero(0x55),
        _ => Data::Page(Box::new(pattern(global))),
    }
}

pub(super) fn expected_page(global: u64) -> Chunk {
    match content(global) {
        Data::Zero(fill) => [fill; CHUNK_SIZE_BYTES],
        Data::Page(c) => *c,
    }
}

/// Deterministic shuffle.
pub(super) fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = usize::try_from((seed >> 33) % (u64::try_from(i).unwrap() + 1)).unwrap();
        items.swap(i, j);
    }
}

/// (block name, address) of every page of the spec's blocks, by global index.
pub(super) fn page_addresses(spec: &Spec) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (name, length) in &spec.blocks {
        for p in 0..length / 4096 {
            out.push((name.clone(), p * 4096));
        }
    }
    out
}

/// Every page once, shuffled; CONTINUE whenever the block repeats, except every fourth
/// such record names its block anyway (legal, and exercises both paths).
pub(super) fn records(spec: &Spec) -> Vec<Record> {
    let addrs = page_addresses(spec);
    let mut order: Vec<u64> = (0..u64::try_from(addrs.len()).unwrap()).collect();
    shuffle(&mut order, 42);
    // Keep some runs in one block so CONTINUE is common: sort a window.
    if order.len() > 12 {
        order[2..12].sort_unstable();
    }
    let mut out: Vec<Record> = Vec::new();
    for (n, &g) in order.iter().enumerate() {
        let (block, address) = addrs[usize::try_from(g).unwrap()].clone();
        let same = out.last().is_some_and(|r| r.block == block);
        out.push(Record {
            block,
            address,
            extra_flags: 0,
            cont: same && n % 4 != 1,
            data: content(g),
        });
    }
    out
}

pub(super) struct Built {
    pub(super) bytes: Vec<u8>,
    /// Offset of the device state.
    pub(super) device_state_at: usize,
}

pub(super) fn build(spec: &Spec, recs: &[Record]) -> Built {
    let mut area = spec.xml.as_bytes().to_vec();
    area.push(0);
    let mut cookie_offset = 0u32;
    if let Some(c) = &spec.cookie {
        cookie_offset = u32::try_from(area.len()).unwrap();
        area.extend_from_slice(c.as_bytes());
        area.push(0);
    }
    area.resize(area.len() + spec.padding, 0);

    let mut f = Vec::new();
    f.extend_from_slice(&spec.magic);
    let data_len = spec.data_len.unwrap_or(u32::try_from(area.len()).unwrap());
    for v in [
        spec.libvirt_version,
        data_len,
        1,
        spec.compressed,
        cookie_offset,
    ] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&[0u8; 56]);
    assert_eq!(f.len(), LIBVIRT_HEADER_BYTES);
    f.extend_from_slice(&area);
    f.extend_from_slice(&spec.preamble);

    f.push(spec.first_section_type);
    f.extend_from_slice(&SECTION_ID.to_be_bytes());
    f.push(u8::try_from(spec.ram_idstr.len()).unwrap());
    f.extend_from_slice(spec.ram_idstr.as_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(&spec.ram_version.to_be_bytes());
    let total: u64 = spec.blocks.iter().map(|b| b.1).sum();
    f.extend_from_slice(&(spec.mem_size.unwrap_or(total) | 0x04).to_be_bytes());
    for (name, length) in &spec.blocks {
        f.push(u8::try_from(name.len()).unwrap());
        f.extend_from_slice(name.as_bytes());
        f.extend_from_slice(&length.to_be_bytes());
    }
    f.extend_from_slice(&spec.start_extra);
    f.extend_from_slice(&0x10u64.to_be_bytes());
    f.push(0x7e);
    f.extend_from_slice(&spec.footer_id.to_be_bytes());

    let sections = spec.parts + 1;
    let per = recs.len().div_ceil(sections).max(1);
    let mut chunks: Vec<&[Record]> = recs.chunks(per).collect();
    chunks.resize(sections, &[]);
    for (i, chunk) in chunks.iter().enumerate() {
        let is_end = i == sections - 1;
        if is_end {
            f.extend_from_slice(&spec.before_end);
        }
        f.push(if is_end { 0x03 } else { 0x02 });
        f.extend_from_slice(&spec.part_section_id.to_be_bytes());
        for r in *chunk {
            let mut flags = r.extra_flags | if r.cont { 0x20 } else { 0 };
            flags |= match r.data {
                Data::Zero(_) => 0x02,
                Data::Page(_) => 0x08,
            };
            f.extend_from_slice(&(r.address | flags).to_be_bytes());
            if !r.cont {
                f.push(u8::try_from(r.block.len()).unwrap());
                f.extend_from_slice(r.block.as_bytes());
            }
            match &r.data {
                Data::Zero(fill) => f.push(*fill),
                Data::Page(c) => f.extend_from_slice(&c[..]),
            }
        }
        f.extend_from_slice(&0x10u64.to_be_bytes());
        f.push(0x7e);
        f.extend_from_slice(&spec.footer_id.to_be_bytes());
    }
    let device_state_at = f.len();
    f.extend_from_slice(&spec.device_state);
    Built {
        bytes: f,
        device_state_at,
    }
}

pub(super) fn good() -> (Spec, Built) {
    let spec = Spec::default();
    let recs = records(&spec);
    let built = build(&spec, &recs);
    (spec, built)
}

pub(super) type Pages = Vec<(u64, Box<Chunk>)>;

pub(super) fn read_all(bytes: &[u8]) -> Result<(SaveFileLayout, Pages, Vec<u8>), SaveFileError> {
    let mut r = SaveFileReader::open(bytes)?;
    let mut pages = Vec::new();
    let mut buf = [0u8; CHUNK_SIZE_BYTES];
    while let Some(i) = r.next_page(&mut buf)? {
        pages.push((i, Box::new(buf)));
    }
    assert_eq!(r.pages_read(), u64::try_from(pages.len()).unwrap());
    let layout = r.layout().clone();
    let ds = r.finish()?;
    Ok((layout, pages, ds))
}

/// Writes with SaveFileWriter; checks every returned offset points at the page's bytes.
pub(super) fn write_all(
    layout: &SaveFileLayout,
    xml: Option<&str>,
    pages: &Pages,
    ds: &[u8],
) -> Vec<u8> {
    let mut w = SaveFileWriter::new(Vec::new(), layout, xml).unwrap();
    let mut offsets = Vec::new();
    for (i, data) in pages {
        let before = w.bytes_written();
        match w.write_page(*i, data).unwrap() {
            Some(off) => {
                assert!(off > before);
                offsets.push((off, *i));
            }
            None => assert!(crate::chunk::is_zero(&data[..])),
        }
    }
    let out = w.finish(ds).unwrap();
    let by_index: BTreeMap<u64, &Chunk> = pages.iter().map(|(i, c)| (*i, &**c)).collect();
    for (off, i) in offsets {
        let off = usize::try_from(off).unwrap();
        assert_eq!(&out[off..off + CHUNK_SIZE_BYTES], &by_index[&i][..]);
    }
    out
}

pub(super) fn err_of(bytes: &[u8]) -> SaveFileError {
    match read_all(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

pub(super) fn err_with(spec: &Spec, recs: &[Record]) -> SaveFileError {
    err_of(&build(spec, recs).bytes)
}
