//! Tests: synthetic save files built by a test-only builder that writes the documented
//! layout by hand (records shuffled, spread over several PARTs and the END, CONTINUE mixed
//! with named records), independently of [`SaveFileWriter`].

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::chunk::{Chunk, CHUNK_SIZE_BYTES};

const SECTION_ID: u32 = 2;
const MACHINE: &[u8] = b"pc-i440fx-7.2";
const XML: &str = "<domain type='kvm'><name>vm</name><memory unit='KiB'>96</memory></domain>";
const COOKIE: &str = "<cookie><cpu mode='host-model'/></cookie>";

/// What a page record carries.
#[derive(Clone, Debug)]
enum Data {
    Zero(u8),
    Page(Box<Chunk>),
}

/// One ram record as the builder writes it.
#[derive(Clone, Debug)]
struct Record {
    /// Block name written when `cont` is false.
    block: String,
    address: u64,
    /// Extra flag bits or'ed into the header.
    extra_flags: u64,
    cont: bool,
    data: Data,
}

#[derive(Clone)]
struct Spec {
    magic: [u8; 16],
    libvirt_version: u32,
    compressed: u32,
    xml: String,
    cookie: Option<String>,
    padding: usize,
    /// Overrides `data_len` in the header.
    data_len: Option<u32>,
    preamble: Vec<u8>,
    first_section_type: u8,
    ram_idstr: String,
    ram_version: u32,
    blocks: Vec<(String, u64)>,
    mem_size: Option<u64>,
    /// Records of START (after the block list, before EOS): normally none.
    start_extra: Vec<u8>,
    /// Number of PART sections; records are spread over them and the END.
    parts: usize,
    part_section_id: u32,
    footer_id: u32,
    /// Raw bytes inserted just before the END section.
    before_end: Vec<u8>,
    device_state: Vec<u8>,
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

fn preamble(subsections: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&0x5145_564d_u32.to_be_bytes());
    p.extend_from_slice(&3u32.to_be_bytes());
    p.push(0x07);
    p.extend_from_slice(&u32::try_from(MACHINE.len()).unwrap().to_be_bytes());
    p.extend_from_slice(MACHINE);
    p.extend_from_slice(subsections);
    p
}

fn subsection(name: &str, fields: &[u8]) -> Vec<u8> {
    let mut s = vec![0x05, u8::try_from(name.len()).unwrap()];
    s.extend_from_slice(name.as_bytes());
    s.extend_from_slice(&1u32.to_be_bytes());
    s.extend_from_slice(fields);
    s
}

/// Opaque device state: a FULL section, QEMU's EOF and a JSON description.
fn device_state() -> Vec<u8> {
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
fn pattern(global: u64) -> Chunk {
    let mut c = [0u8; CHUNK_SIZE_BYTES];
    for (i, b) in (0u64..).zip(c.iter_mut()) {
        *b = u8::try_from((global * 131 + i * 7) % 251 + 1).unwrap();
    }
    c
}

/// What the builder sends for each global page: zero pages (as ZERO records), pages
/// filled with 0x55 (as ZERO records with fill byte 0x55), one page with a single
/// non-zero byte, and patterned pages.
fn content(global: u64) -> Data {
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

fn expected_page(global: u64) -> Chunk {
    match content(global) {
        Data::Zero(fill) => [fill; CHUNK_SIZE_BYTES],
        Data::Page(c) => *c,
    }
}

/// Deterministic shuffle.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let j = usize::try_from((seed >> 33) % (u64::try_from(i).unwrap() + 1)).unwrap();
        items.swap(i, j);
    }
}

/// (block name, address) of every page of the spec's blocks, by global index.
fn page_addresses(spec: &Spec) -> Vec<(String, u64)> {
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
fn records(spec: &Spec) -> Vec<Record> {
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
        out.push(Record { block, address, extra_flags: 0, cont: same && n % 4 != 1, data: content(g) });
    }
    out
}

struct Built {
    bytes: Vec<u8>,
    /// Offset of the device state.
    device_state_at: usize,
}

fn build(spec: &Spec, recs: &[Record]) -> Built {
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
    for v in [spec.libvirt_version, data_len, 1, spec.compressed, cookie_offset] {
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
    Built { bytes: f, device_state_at }
}

fn good() -> (Spec, Built) {
    let spec = Spec::default();
    let recs = records(&spec);
    let built = build(&spec, &recs);
    (spec, built)
}

type Pages = Vec<(u64, Box<Chunk>)>;

fn read_all(bytes: &[u8]) -> Result<(SaveFileLayout, Pages, Vec<u8>), SaveFileError> {
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
fn write_all(layout: &SaveFileLayout, xml: Option<&str>, pages: &Pages, ds: &[u8]) -> Vec<u8> {
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

fn err_of(bytes: &[u8]) -> SaveFileError {
    match read_all(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn err_with(spec: &Spec, recs: &[Record]) -> SaveFileError {
    err_of(&build(spec, recs).bytes)
}

// ---------------------------------------------------------------- parsing

#[test]
fn parse_yields_every_page_with_its_index_and_bytes() {
    let (spec, built) = good();
    let (layout, pages, ds) = read_all(&built.bytes).unwrap();
    assert_eq!(layout.page_count(), 36);
    assert_eq!(pages.len(), 36);
    let mut seen = BTreeMap::new();
    for (i, data) in &pages {
        assert_eq!(**data, expected_page(*i), "page {i}");
        assert!(seen.insert(*i, ()).is_none());
    }
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), (0..36).collect::<Vec<_>>());
    // Stream order is the builder's shuffled order.
    let recs = records(&spec);
    let addrs = page_addresses(&spec);
    for ((i, _), r) in pages.iter().zip(&recs) {
        assert_eq!(addrs[usize::try_from(*i).unwrap()], (r.block.clone(), r.address));
    }
    assert_eq!(ds, spec.device_state);
}

#[test]
fn layout_fields_are_parsed() {
    let (spec, built) = good();
    let (layout, _, _) = read_all(&built.bytes).unwrap();
    assert_eq!(layout.libvirt_version, 2);
    assert_eq!(layout.was_running, 1);
    assert_eq!(layout.domain_xml().unwrap(), XML);
    assert_eq!(layout.cookie(), Some(COOKIE.as_bytes()));
    assert_eq!(layout.cookie_offset, u32::try_from(XML.len() + 1).unwrap());
    assert_eq!(layout.xml_area.len(), XML.len() + 1 + COOKIE.len() + 1 + 100);
    assert_eq!(layout.qemu_preamble, spec.preamble);
    assert_eq!(layout.ram_section_id, SECTION_ID);
    assert_eq!(layout.ram_instance_id, 0);
    assert_eq!(layout.ram_version_id, 4);
    let names: Vec<&str> = layout.blocks.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["pc.ram", "pc.bios", "vga.vram"]);
    assert_eq!(layout.ram_bytes(), 36 * 4096);
    assert_eq!(layout.locate(0), Some((0, 0)));
    assert_eq!(layout.locate(23), Some((0, 23 * 4096)));
    assert_eq!(layout.locate(24), Some((1, 0)));
    assert_eq!(layout.locate(28), Some((2, 0)));
    assert_eq!(layout.locate(35), Some((2, 7 * 4096)));
    assert_eq!(layout.locate(36), None);
}

#[test]
fn locate_skips_empty_blocks() {
    let mut layout = read_all(&good().1.bytes).unwrap().0;
    layout.blocks.insert(1, RamBlock { name: "empty".to_owned(), length: 0 });
    assert_eq!(layout.locate(24), Some((2, 0)));
    assert_eq!(layout.page_count(), 36);
}

#[test]
fn pages_never_sent_are_not_reported_and_finish_drains_unread_pages() {
    let spec = Spec::default();
    let mut recs = records(&spec);
    recs.truncate(20);
    let (_, pages, ds) = read_all(&build(&spec, &recs).bytes).unwrap();
    assert_eq!(pages.len(), 20);
    assert_eq!(ds, spec.device_state);

    let built = build(&spec, &records(&spec));
    let mut r = SaveFileReader::open(&built.bytes[..]).unwrap();
    let mut buf = [0u8; CHUNK_SIZE_BYTES];
    r.next_page(&mut buf).unwrap().unwrap();
    assert_eq!(r.finish().unwrap(), spec.device_state);
}

#[test]
fn continue_across_section_boundaries_and_empty_parts() {
    let spec = Spec { parts: 40, ..Spec::default() };
    let mut recs = records(&spec);
    for r in recs.iter_mut().skip(1) {
        r.block = String::new();
        r.cont = true;
    }
    // Continue only works within one block: keep the first block's pages.
    let first_block = recs[0].block.clone();
    let addrs = page_addresses(&spec);
    recs = addrs
        .iter()
        .enumerate()
        .filter(|(_, (b, _))| *b == first_block)
        .map(|(g, (b, a))| Record {
            block: b.clone(),
            address: *a,
            extra_flags: 0,
            cont: g != 0 && g != 24 && g != 28,
            data: content(u64::try_from(g).unwrap()),
        })
        .collect();
    let (_, pages, _) = read_all(&build(&spec, &recs).bytes).unwrap();
    assert_eq!(pages.len(), recs.len());
}

#[test]
fn configuration_subsections_and_missing_configuration_are_accepted() {
    let mut subs = subsection("configuration/target-page-bits", &12u32.to_be_bytes());
    subs.extend(subsection("configuration/capabilities", &0u32.to_be_bytes()));
    subs.extend(subsection("configuration/uuid", &[7u8; 16]));
    let spec = Spec { preamble: preamble(&subs), ..Spec::default() };
    let (layout, pages, _) = read_all(&build(&spec, &records(&spec)).bytes).unwrap();
    assert_eq!(layout.qemu_preamble, spec.preamble);
    assert_eq!(pages.len(), 36);
    assert_eq!(SaveFileLayout::from_bytes(&layout.to_bytes()).unwrap(), layout);

    let mut bare = Vec::new();
    bare.extend_from_slice(&0x5145_564d_u32.to_be_bytes());
    bare.extend_from_slice(&3u32.to_be_bytes());
    let spec = Spec { preamble: bare, ..Spec::default() };
    let (layout, _, _) = read_all(&build(&spec, &records(&spec)).bytes).unwrap();
    assert_eq!(layout.qemu_preamble, spec.preamble);
}

#[test]
fn version_1_header_without_cookie_is_accepted() {
    let spec = Spec { libvirt_version: 1, cookie: None, ..Spec::default() };
    let (layout, _, _) = read_all(&build(&spec, &records(&spec)).bytes).unwrap();
    assert_eq!(layout.cookie_offset, 0);
    assert_eq!(layout.cookie(), None);
    assert_eq!(layout.domain_xml().unwrap(), XML);
}

// ---------------------------------------------------------------- writing

#[test]
fn round_trip_parse_write_parse_keeps_layout_and_pages() {
    let (spec, built) = good();
    let (layout, pages, ds) = read_all(&built.bytes).unwrap();
    let out = write_all(&layout, None, &pages, &ds);
    let (layout2, pages2, ds2) = read_all(&out).unwrap();
    assert_eq!(layout2, layout);
    assert_eq!(ds2, spec.device_state);
    let a: BTreeMap<u64, Box<Chunk>> = pages.into_iter().collect();
    let b: BTreeMap<u64, Box<Chunk>> = pages2.into_iter().collect();
    assert_eq!(a, b);

    // Pages written in another order (index order) read back the same too.
    let mut sorted: Pages = a.clone().into_iter().collect();
    sorted.reverse();
    let out = write_all(&layout, None, &sorted, &ds);
    let (layout3, pages3, _) = read_all(&out).unwrap();
    assert_eq!(layout3, layout);
    assert_eq!(pages3.into_iter().collect::<BTreeMap<_, _>>(), a);
}

#[test]
fn writer_output_rewrites_byte_identical() {
    let (_, built) = good();
    let (layout, pages, ds) = read_all(&built.bytes).unwrap();
    let first = write_all(&layout, None, &pages, &ds);
    let (layout1, pages1, ds1) = read_all(&first).unwrap();
    let second = write_all(&layout1, None, &pages1, &ds1);
    assert_eq!(first, second);
    // The original's header, XML area and preamble are reproduced verbatim.
    let prefix = LIBVIRT_HEADER_BYTES + layout.xml_area.len() + layout.qemu_preamble.len();
    assert_eq!(first[..prefix], built.bytes[..prefix]);
}

#[test]
fn writer_uses_zero_and_continue_records() {
    let (_, built) = good();
    let (layout, _, ds) = read_all(&built.bytes).unwrap();
    let mut w = SaveFileWriter::new(Vec::new(), &layout, None).unwrap();
    let start = w.bytes_written();
    assert_eq!(w.write_page(0, &[0; CHUNK_SIZE_BYTES]).unwrap(), None);
    // ZERO, no CONTINUE: header, name, fill byte.
    assert_eq!(w.bytes_written() - start, 8 + 1 + 6 + 1);
    let before = w.bytes_written();
    assert_eq!(w.write_page(1, &pattern(1)).unwrap(), Some(before + 8));
    let before = w.bytes_written();
    assert_eq!(w.write_page(24, &pattern(24)).unwrap(), Some(before + 8 + 1 + 7));
    let out = w.finish(&ds).unwrap();
    let rec = &out[usize::try_from(start).unwrap()..];
    assert_eq!(u64::from_be_bytes(rec[..8].try_into().unwrap()), 0x02);
    assert_eq!(&rec[8..15], b"\x06pc.ram");
    assert_eq!(u64::from_be_bytes(rec[16..24].try_into().unwrap()), 4096 | 0x08 | 0x20);
}

#[test]
fn writer_refuses_out_of_range_pages_and_bad_device_state() {
    let (layout, _, _) = read_all(&good().1.bytes).unwrap();
    let mut w = SaveFileWriter::new(Vec::new(), &layout, None).unwrap();
    let e = w.write_page(36, &[0; CHUNK_SIZE_BYTES]).unwrap_err();
    assert!(matches!(e, SaveFileError::PageOutOfRange { index: 36, pages: 36 }), "{e}");
    let e = w.finish(&[]).unwrap_err();
    assert!(matches!(e, SaveFileError::EmptyDeviceState), "{e}");
}

#[test]
fn writer_refuses_invalid_layouts() {
    let (layout, _, _) = read_all(&good().1.bytes).unwrap();
    let mut bad = layout.clone();
    bad.blocks[1].length = 100;
    let e = SaveFileWriter::new(Vec::new(), &bad, None).err().unwrap();
    assert!(matches!(e, SaveFileError::BlockNotPageAligned { length: 100, .. }), "{e}");
    let mut bad = layout.clone();
    bad.blocks[1].name = "pc.ram".to_owned();
    let e = SaveFileWriter::new(Vec::new(), &bad, None).err().unwrap();
    assert!(matches!(e, SaveFileError::DuplicateBlock { .. }), "{e}");
    let mut bad = layout.clone();
    bad.blocks[1].name = "x".repeat(256);
    let e = SaveFileWriter::new(Vec::new(), &bad, None).err().unwrap();
    assert!(matches!(e, SaveFileError::BadBlockName { .. }), "{e}");
    let mut bad = layout;
    bad.qemu_preamble.push(0x05);
    let e = SaveFileWriter::new(Vec::new(), &bad, None).err().unwrap();
    assert!(e.is_invalid_input(), "{e}");
}

// ---------------------------------------------------------------- XML replacement

fn replaced(spec: &Spec, xml: &str) -> (SaveFileLayout, SaveFileLayout) {
    let (layout, pages, ds) = read_all(&build(spec, &records(spec)).bytes).unwrap();
    let out = write_all(&layout, Some(xml), &pages, &ds);
    let (new_layout, new_pages, new_ds) = read_all(&out).unwrap();
    assert_eq!(new_ds, ds);
    assert_eq!(new_pages.len(), pages.len());
    assert!(new_layout.same_ram_layout(&layout));
    assert_eq!(new_layout.domain_xml().unwrap(), xml);
    (layout, new_layout)
}

#[test]
fn shorter_xml_is_written_in_place_and_keeps_the_cookie() {
    let (old, new) = replaced(&Spec::default(), "<domain/>");
    assert_eq!(new.cookie_offset, old.cookie_offset);
    assert_eq!(new.cookie(), Some(COOKIE.as_bytes()));
    assert_eq!(new.xml_area.len(), old.xml_area.len());
    let end = usize::try_from(new.cookie_offset).unwrap();
    assert!(new.xml_area[10..end].iter().all(|&b| b == 0));
}

#[test]
fn longer_xml_moves_the_cookie_within_the_area() {
    let xml = format!("{XML}<!--{}-->", "x".repeat(40));
    let (old, new) = replaced(&Spec::default(), &xml);
    assert_eq!(new.cookie_offset, u32::try_from(xml.len() + 1).unwrap());
    assert_eq!(new.cookie(), Some(COOKIE.as_bytes()));
    assert_eq!(new.xml_area.len(), old.xml_area.len());
}

#[test]
fn much_longer_xml_grows_the_area_with_libvirt_padding() {
    let xml = format!("{XML}<!--{}-->", "y".repeat(5000));
    let (_, new) = replaced(&Spec::default(), &xml);
    assert_eq!(new.cookie_offset, u32::try_from(xml.len() + 1).unwrap());
    assert_eq!(new.cookie(), Some(COOKIE.as_bytes()));
    assert_eq!(new.xml_area.len(), xml.len() + 1 + COOKIE.len() + 1 + 64 * 1024);
}

#[test]
fn xml_replacement_without_cookie() {
    let spec = Spec { cookie: None, ..Spec::default() };
    let (old, new) = replaced(&spec, "<domain/>");
    assert_eq!((new.cookie_offset, new.xml_area.len()), (0, old.xml_area.len()));
    let long = "z".repeat(1000);
    let (_, new) = replaced(&spec, &long);
    assert_eq!((new.cookie_offset, new.xml_area.len()), (0, 1001 + 64 * 1024));
}

#[test]
fn xml_replacement_with_nul_is_refused() {
    let (layout, _, _) = read_all(&good().1.bytes).unwrap();
    let e = SaveFileWriter::new(Vec::new(), &layout, Some("<a>\0</a>")).err().unwrap();
    assert!(matches!(e, SaveFileError::BadXml { .. }), "{e}");
}

// ---------------------------------------------------------------- errors

fn assert_err(e: SaveFileError, ok: impl Fn(&SaveFileError) -> bool) {
    assert!(ok(&e), "unexpected error: {e:?}");
    assert!(e.is_invalid_input());
    assert!(!e.to_string().is_empty());
}

#[test]
fn header_errors() {
    let recs = records(&Spec::default());
    let spec = Spec { magic: *b"NotASaveFileAtAl", ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::BadMagic));
    let spec = Spec { magic: *b"LibvirtQemudPart", ..Spec::default() };
    let e = err_with(&spec, &recs);
    assert_eq!(e.to_string(), "save file is incomplete (libvirt was still writing it)");
    assert_err(e, |e| matches!(e, SaveFileError::Incomplete));
    let spec = Spec { compressed: 3, ..Spec::default() };
    let e = err_with(&spec, &recs);
    assert!(e.to_string().contains("save_image_format = \"raw\""));
    assert_err(e, |e| matches!(e, SaveFileError::Compressed { format: 3 }));
    let spec = Spec { libvirt_version: 3, ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::UnsupportedVersion { version: 3, .. })
    });
    let spec = Spec { data_len: Some(u32::MAX), ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::TooLarge { what: "xml area", .. }));
    let spec = Spec { data_len: Some(0), ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::BadXml { .. }));
}

#[test]
fn xml_area_errors() {
    let recs = records(&Spec::default());
    // No NUL before the cookie.
    let mut bytes = build(&Spec::default(), &recs).bytes;
    let xml_end = LIBVIRT_HEADER_BYTES + XML.len();
    bytes[xml_end] = b' ';
    assert_err(err_of(&bytes), |e| matches!(e, SaveFileError::BadXml { .. }));
    // Not UTF-8.
    let mut bytes = build(&Spec::default(), &recs).bytes;
    bytes[LIBVIRT_HEADER_BYTES + 1] = 0xff;
    assert_err(err_of(&bytes), |e| matches!(e, SaveFileError::BadXml { .. }));
    // Cookie offset beyond data_len.
    let mut bytes = build(&Spec::default(), &recs).bytes;
    bytes[32..36].copy_from_slice(&100_000u32.to_le_bytes());
    assert_err(err_of(&bytes), |e| matches!(e, SaveFileError::BadXml { .. }));
}

#[test]
fn preamble_errors() {
    let recs = records(&Spec::default());
    let mut p = preamble(&[]);
    p[0] = b'X';
    let spec = Spec { preamble: p, ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::BadQemuMagic { .. }));
    let mut p = preamble(&[]);
    p[7] = 2;
    let spec = Spec { preamble: p, ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::UnsupportedVersion { version: 2, .. }));
    let mut caps = 1u32.to_be_bytes().to_vec();
    caps.push(15);
    caps.extend_from_slice(b"x-ignore-shared");
    let spec = Spec { preamble: preamble(&subsection("configuration/capabilities", &caps)), ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::UnsupportedCapability { name } if name == "x-ignore-shared")
    });
    let spec = Spec {
        preamble: preamble(&subsection("configuration/target-page-bits", &16u32.to_be_bytes())),
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::BadConfiguration { .. }));
    let spec = Spec { preamble: preamble(&subsection("configuration/new-thing", &[])), ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::UnknownSubsection { .. }));
    let mut p = preamble(&[]);
    p[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
    let spec = Spec { preamble: p, ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::TooLarge { .. }));
}

#[test]
fn ram_start_errors() {
    let recs = records(&Spec::default());
    let spec = Spec { first_section_type: 0x04, ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::UnexpectedSection { type_byte: 0x04, .. })
    });
    let spec = Spec { ram_idstr: "block".to_owned(), ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::NotRamSection { .. }));
    let spec = Spec { ram_version: 3, ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::UnsupportedVersion { version: 3, .. }));
    // Block lengths exceeding MEM_SIZE.
    let spec = Spec { mem_size: Some(30 * 4096), ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::SizeMismatch { .. }));
    // MEM_SIZE larger than the blocks: the parser reads on into what follows and fails.
    let spec = Spec { mem_size: Some(40 * 4096), ..Spec::default() };
    assert!(err_with(&spec, &recs).is_invalid_input());
    let spec = Spec { mem_size: Some(1 << 50), ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::TooLarge { what: "guest ram", .. }));
    // (MEM_SIZE stays page-aligned: its low bits would read as flags.)
    let mut spec = Spec { mem_size: Some(40 * 4096), ..Spec::default() };
    spec.blocks[1].1 = 4096 * 4 + 512;
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::BlockNotPageAligned { name, length: 16896 } if name == "pc.bios")
    });
    let mut spec = Spec::default();
    spec.blocks[2].0 = "pc.ram".to_owned();
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::DuplicateBlock { .. }));
    let mut spec = Spec::default();
    spec.blocks[2].0 = String::new();
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::BadBlockName { .. }));
    // A page record inside START, and a multifd flush record.
    let mut extra = (0x08u64).to_be_bytes().to_vec();
    extra.extend_from_slice(b"\x06pc.ram");
    let spec = Spec { start_extra: extra, ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::UnexpectedRecord { flags: 0x08, .. }));
    let spec = Spec { start_extra: 0x200u64.to_be_bytes().to_vec(), ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::UnknownPageFlags { flags: 0x200, .. }));
    let spec = Spec { footer_id: 9, ..Spec::default() };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::BadFooter { section_id: 2, .. }));
}

#[test]
fn ram_record_errors() {
    let spec = Spec::default();
    let base = records(&spec);

    let mut recs = base.clone();
    recs[5].extra_flags = 0x40; // XBZRLE
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::UnknownPageFlags { .. }));
    let mut recs = base.clone();
    recs[5].extra_flags = 0x04; // MEM_SIZE with a page
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::UnexpectedRecord { .. }));

    let mut recs = base.clone();
    let dup = recs[3].clone();
    recs.insert(30, Record { cont: false, ..dup });
    let e = err_with(&spec, &recs);
    assert_err(e, |e| matches!(e, SaveFileError::DuplicatePage { .. }));

    let mut recs = base.clone();
    recs[4] = Record { block: "nvram".to_owned(), cont: false, ..recs[4].clone() };
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::BadBlock { name } if name == "nvram"));

    let mut recs = base.clone();
    recs[4] = Record { block: "pc.bios".to_owned(), address: 4 * 4096, cont: false, ..recs[4].clone() };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::AddressOutOfRange { address: 16384, length: 16384, .. })
    });

    let mut recs = base.clone();
    recs[0].cont = true;
    assert_err(err_with(&spec, &recs), |e| matches!(e, SaveFileError::ContinueWithoutBlock { .. }));

    // A device section before the ram END.
    let spec2 = Spec { before_end: vec![0x04, 0, 0, 0, 7], ..Spec::default() };
    assert_err(err_with(&spec2, &base), |e| matches!(e, SaveFileError::UnexpectedSection { type_byte: 0x04, .. }));
    let spec2 = Spec { part_section_id: 5, footer_id: 5, ..Spec::default() };
    // The START footer is checked against START's id (2): make only PARTs differ.
    let mut built = build(&spec2, &base).bytes;
    let start_footer = find_start_footer(&built);
    built[start_footer + 1..start_footer + 5].copy_from_slice(&SECTION_ID.to_be_bytes());
    assert_err(err_of(&built), |e| matches!(e, SaveFileError::WrongSectionId { expected: 2, found: 5, .. }));

    let spec2 = Spec { device_state: Vec::new(), ..Spec::default() };
    assert_err(err_with(&spec2, &base), |e| matches!(e, SaveFileError::EmptyDeviceState));
}

/// Offset of the ram START footer in a default-spec file.
fn find_start_footer(bytes: &[u8]) -> usize {
    let spec = Spec::default();
    let area = XML.len() + 1 + COOKIE.len() + 1 + spec.padding;
    let start = LIBVIRT_HEADER_BYTES + area + spec.preamble.len();
    let blocks: usize = spec.blocks.iter().map(|b| 1 + b.0.len() + 8).sum();
    let at = start + 1 + 4 + 4 + 4 + 4 + 8 + blocks + 8;
    assert_eq!(bytes[at], 0x7e);
    at
}

#[test]
fn truncation_anywhere_before_the_device_state_is_an_error() {
    let (_, built) = good();
    let bytes = &built.bytes;
    let end = built.device_state_at;
    let mut cuts: Vec<usize> = (0..600.min(end)).collect();
    cuts.extend((600..end).step_by(37));
    // Around every record header boundary region near the end of the ram section.
    cuts.extend(end.saturating_sub(200)..=end);
    for cut in cuts {
        match read_all(&bytes[..cut]) {
            Ok(_) => panic!("truncation at {cut} of {} was accepted", bytes.len()),
            Err(e) => assert!(e.is_invalid_input(), "cut {cut}: {e:?}"),
        }
    }
    // Inside the opaque device state truncation cannot be seen: it parses.
    let (_, _, ds) = read_all(&bytes[..end + 10]).unwrap();
    assert_eq!(ds.len(), 10);
}

#[test]
fn is_invalid_input_is_false_only_for_real_io_errors() {
    use std::io;
    assert!(!SaveFileError::Io(io::Error::other("disk on fire")).is_invalid_input());
    assert!(SaveFileError::Io(io::Error::from(io::ErrorKind::UnexpectedEof)).is_invalid_input());
    assert!(SaveFileError::Truncated { what: "x" }.is_invalid_input());

    struct Failing;
    impl io::Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("broken"))
        }
    }
    let e = SaveFileReader::open(Failing).err().unwrap();
    assert!(matches!(e, SaveFileError::Io(_)) && !e.is_invalid_input());
}

// ---------------------------------------------------------------- layout blob

#[test]
fn layout_bytes_round_trip() {
    let (layout, _, _) = read_all(&good().1.bytes).unwrap();
    let blob = layout.to_bytes();
    assert_eq!(SaveFileLayout::from_bytes(&blob).unwrap(), layout);
    assert!(layout.same_ram_layout(&SaveFileLayout::from_bytes(&blob).unwrap()));
    let mut other = layout.clone();
    other.blocks[2].length += 4096;
    assert!(!layout.same_ram_layout(&other));
}

#[test]
fn layout_from_truncated_or_garbage_bytes_errors() {
    let (layout, _, _) = read_all(&good().1.bytes).unwrap();
    let blob = layout.to_bytes();
    for cut in 0..blob.len() {
        assert!(SaveFileLayout::from_bytes(&blob[..cut]).is_err(), "cut {cut}");
    }
    let mut long = blob.clone();
    long.push(0);
    let e = SaveFileLayout::from_bytes(&long).unwrap_err();
    assert!(matches!(e, SaveFileError::BadLayoutBlob { .. }), "{e}");
    let e = SaveFileLayout::from_bytes(b"garbage garbage garbage").unwrap_err();
    assert!(matches!(e, SaveFileError::BadLayoutBlob { .. }), "{e}");
    // A huge claimed length is refused before any allocation.
    let mut huge = blob[..32].to_vec();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    let e = SaveFileLayout::from_bytes(&huge).unwrap_err();
    assert!(matches!(e, SaveFileError::TooLarge { .. }), "{e}");
    // Validation runs: an unaligned block is refused.
    let mut bad = layout;
    bad.blocks[0].length += 1;
    let e = SaveFileLayout::from_bytes(&bad.to_bytes()).unwrap_err();
    assert!(matches!(e, SaveFileError::BlockNotPageAligned { .. }), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn layout_from_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = SaveFileLayout::from_bytes(&bytes);
        let mut with_magic = b"CLDSAVL1".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = SaveFileLayout::from_bytes(&with_magic);
    }

    #[test]
    fn layout_from_mutated_blob_never_panics_and_is_canonical(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)
    ) {
        let spec = Spec { cookie: None, padding: 4, ..Spec::default() };
        let (layout, _, _) = read_all(&build(&spec, &records(&spec)).bytes).unwrap();
        let mut blob = layout.to_bytes();
        for (at, v) in flips {
            let i = at.index(blob.len());
            blob[i] = v;
        }
        if let Ok(parsed) = SaveFileLayout::from_bytes(&blob) {
            prop_assert_eq!(parsed.to_bytes(), blob);
        }
    }

    #[test]
    fn corrupt_save_files_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
    ) {
        let (_, built) = good();
        let mut bytes = built.bytes;
        // Corrupt the structured part (not the opaque device state).
        for (at, v) in flips {
            let i = at.index(built.device_state_at);
            bytes[i] = v;
        }
        let _ = read_all(&bytes);
    }
}
