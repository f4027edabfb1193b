//! Tests on synthetic save files (see [`builder`]): parsing, writing, round trips and XML
//! replacement here; every error, truncation and the layout blob in [`errors`].

use std::collections::BTreeMap;

use super::*;
use crate::chunk::{Chunk, CHUNK_SIZE_BYTES};

mod builder;
mod errors;

use builder::*;

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
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (0..36).collect::<Vec<_>>()
    );
    // Stream order is the builder's shuffled order.
    let recs = records(&spec);
    let addrs = page_addresses(&spec);
    for ((i, _), r) in pages.iter().zip(&recs) {
        assert_eq!(
            addrs[usize::try_from(*i).unwrap()],
            (r.block.clone(), r.address)
        );
    }
    assert_eq!(ds, spec.device_state);
}

#[test]
fn sparse_reads_leave_zero_pages_unwritten_and_fill_the_rest() {
    let (_, built) = good();
    let mut r = SaveFileReader::open(&built.bytes[..]).unwrap();
    let (mut zero, mut filled) = (0, 0);
    loop {
        let mut buf = [0xAA; CHUNK_SIZE_BYTES];
        let Some((i, is_zero)) = r.next_page_sparse(&mut buf).unwrap() else {
            break;
        };
        if is_zero {
            assert_eq!(expected_page(i), [0; CHUNK_SIZE_BYTES], "page {i}");
            assert_eq!(buf, [0xAA; CHUNK_SIZE_BYTES], "page {i} was written");
            zero += 1;
        } else {
            // Fill bytes other than 0 (0x55 here) are written out.
            assert_eq!(buf, expected_page(i), "page {i}");
            filled += 1;
        }
    }
    assert!(zero > 0 && filled > 0, "{zero} zero, {filled} other pages");
    assert_eq!(zero + filled, 36);
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
    assert_eq!(
        layout.xml_area.len(),
        XML.len() + 1 + COOKIE.len() + 1 + 100
    );
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
    layout.blocks.insert(
        1,
        RamBlock {
            name: "empty".to_owned(),
            length: 0,
        },
    );
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
    let spec = Spec {
        parts: 40,
        ..Spec::default()
    };
    // Every page in index order, named only at each block's first page: with 41 sections
    // for 36 records, each record is alone in its section (every CONTINUE follows a
    // section boundary) and the last sections are empty.
    let addrs = page_addresses(&spec);
    let recs: Vec<Record> = addrs
        .iter()
        .enumerate()
        .map(|(g, (b, a))| Record {
            block: b.clone(),
            address: *a,
            extra_flags: 0,
            cont: g != 0 && g != 24 && g != 28,
            data: content(u64::try_from(g).unwrap()),
        })
        .collect();
    let (_, pages, _) = read_all(&build(&spec, &recs).bytes).unwrap();
    assert_eq!(pages.len(), 36);
    for (i, data) in &pages {
        assert_eq!(**data, expected_page(*i));
    }
}

#[test]
fn configuration_subsections_and_missing_configuration_are_accepted() {
    let mut subs = subsection("configuration/target-page-bits", &12u32.to_be_bytes());
    subs.extend(subsection(
        "configuration/capabilities",
        &0u32.to_be_bytes(),
    ));
    subs.extend(subsection("configuration/uuid", &[7u8; 16]));
    let spec = Spec {
        preamble: preamble(&subs),
        ..Spec::default()
    };
    let (layout, pages, _) = read_all(&build(&spec, &records(&spec)).bytes).unwrap();
    assert_eq!(layout.qemu_preamble, spec.preamble);
    assert_eq!(pages.len(), 36);
    assert_eq!(
        SaveFileLayout::from_bytes(&layout.to_bytes()).unwrap(),
        layout
    );

    let mut bare = Vec::new();
    bare.extend_from_slice(&0x5145_564d_u32.to_be_bytes());
    bare.extend_from_slice(&3u32.to_be_bytes());
    let spec = Spec {
        preamble: bare,
        ..Spec::default()
    };
    let (layout, _, _) = read_all(&build(&spec, &records(&spec)).bytes).unwrap();
    assert_eq!(layout.qemu_preamble, spec.preamble);
}

#[test]
fn version_1_header_without_cookie_is_accepted() {
    let spec = Spec {
        libvirt_version: 1,
        cookie: None,
        ..Spec::default()
    };
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
fn a_file_written_in_parts_side_by_side_reads_back_whole() {
    let (_, built) = good();
    let (layout, pages, ds) = read_all(&built.bytes).unwrap();
    let all: BTreeMap<u64, Box<Chunk>> = pages.into_iter().collect();
    let xml = "<domain>in parts</domain>";
    // Part one: every third page, in shuffled order, zero pages as ZERO records; part two:
    // the others in index order, zero pages as PAGE records of zeros (both are valid).
    let mut first: Vec<u64> = all.keys().copied().filter(|i| i % 3 == 0).collect();
    shuffle(&mut first, 9);
    let has_data = |i: u64| !crate::chunk::is_zero(&all[&i][..]);
    let head = prefix(&layout, Some(xml)).unwrap();
    let first_len = records_len(&layout, first.iter().map(|&i| (i, has_data(i)))).unwrap();

    let at = head.len() as u64;
    let mut one = SaveFileWriter::records_at(Vec::new(), &layout, at).unwrap();
    for &i in &first {
        let offset = one
            .write_record(i, has_data(i).then_some(&*all[&i]))
            .unwrap();
        assert_eq!(offset.is_some(), has_data(i));
    }
    assert_eq!(one.bytes_written(), at + first_len);
    let at = at + first_len;
    let mut two = SaveFileWriter::records_at(Vec::new(), &layout, at).unwrap();
    let mut offsets = Vec::new();
    for (&i, data) in all.iter().filter(|(i, _)| *i % 3 != 0) {
        let offset = two.write_record(i, Some(data)).unwrap().unwrap();
        offsets.push((i, offset));
    }
    let mut file = head;
    file.extend(one.into_inner());
    file.extend(two.finish(&ds).unwrap());
    for (i, offset) in offsets {
        let offset = usize::try_from(offset).unwrap();
        assert_eq!(file[offset..offset + CHUNK_SIZE_BYTES], all[&i][..]);
    }

    let (layout2, pages2, ds2) = read_all(&file).unwrap();
    assert!(layout2.same_ram_layout(&layout));
    assert_eq!(layout2.domain_xml().unwrap(), xml);
    assert_eq!(ds2, ds);
    assert_eq!(pages2.into_iter().collect::<BTreeMap<_, _>>(), all);
}

#[test]
fn write_record_keeps_a_zero_page_asked_to_be_a_page_record() {
    let (layout, _, _) = read_all(&good().1.bytes).unwrap();
    let mut w = SaveFileWriter::records_at(Vec::new(), &layout, 100).unwrap();
    assert_eq!(
        w.write_record(0, Some(&[0; CHUNK_SIZE_BYTES])).unwrap(),
        Some(100 + 8 + 1 + 6)
    );
    assert_eq!(w.write_record(1, None).unwrap(), None);
    let out = w.into_inner();
    assert_eq!(out.len(), 8 + 1 + 6 + CHUNK_SIZE_BYTES + 8 + 1);
    assert_eq!(u64::from_be_bytes(out[..8].try_into().unwrap()), 0x08);
    let second = &out[8 + 7 + CHUNK_SIZE_BYTES..];
    assert_eq!(
        u64::from_be_bytes(second[..8].try_into().unwrap()),
        4096 | 0x02 | 0x20
    );
    assert_eq!(
        records_len(&layout, [(0, true), (1, false)]).unwrap(),
        out.len() as u64
    );
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
    assert_eq!(
        w.write_page(24, &pattern(24)).unwrap(),
        Some(before + 8 + 1 + 7)
    );
    let out = w.finish(&ds).unwrap();
    let rec = &out[usize::try_from(start).unwrap()..];
    assert_eq!(u64::from_be_bytes(rec[..8].try_into().unwrap()), 0x02);
    assert_eq!(&rec[8..15], b"\x06pc.ram");
    assert_eq!(
        u64::from_be_bytes(rec[16..24].try_into().unwrap()),
        4096 | 0x08 | 0x20
    );
}

#[test]
fn writer_refuses_out_of_range_pages_and_bad_device_state() {
    let (layout, _, _) = read_all(&good().1.bytes).unwrap();
    let mut w = SaveFileWriter::new(Vec::new(), &layout, None).unwrap();
    let e = w.write_page(36, &[0; CHUNK_SIZE_BYTES]).unwrap_err();
    assert!(
        matches!(
            e,
            SaveFileError::PageOutOfRange {
                index: 36,
                pages: 36
            }
        ),
        "{e}"
    );
    let e = w.finish(&[]).unwrap_err();
    assert!(matches!(e, SaveFileError::EmptyDeviceState), "{e}");
}

#[test]
fn writer_refuses_invalid_layouts() {
    let (layout, _, _) = read_all(&good().1.bytes).unwrap();
    let mut bad = layout.clone();
    bad.blocks[1].length = 100;
    let e = SaveFileWriter::new(Vec::new(), &bad, None).err().unwrap();
    assert!(
        matches!(e, SaveFileError::BlockNotPageAligned { length: 100, .. }),
        "{e}"
    );
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
    assert_eq!(
        new.xml_area.len(),
        xml.len() + 1 + COOKIE.len() + 1 + 64 * 1024
    );
}

#[test]
fn xml_replacement_without_cookie() {
    let spec = Spec {
        cookie: None,
        ..Spec::default()
    };
    let (old, new) = replaced(&spec, "<domain/>");
    assert_eq!(
        (new.cookie_offset, new.xml_area.len()),
        (0, old.xml_area.len())
    );
    let long = "z".repeat(1000);
    let (_, new) = replaced(&spec, &long);
    assert_eq!(
        (new.cookie_offset, new.xml_area.len()),
        (0, 1001 + 64 * 1024)
    );
}

#[test]
fn xml_replacement_with_nul_is_refused() {
    let (layout, _, _) = read_all(&good().1.bytes).unwrap();
    let e = SaveFileWriter::new(Vec::new(), &layout, Some("<a>\0</a>"))
        .err()
        .unwrap();
    assert!(matches!(e, SaveFileError::BadXml { .. }), "{e}");
}
