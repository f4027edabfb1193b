//! Every error variant, truncation, corruption, and the layout blob.

use proptest::prelude::*;

use super::builder::*;
use crate::savefile::*;

// ---------------------------------------------------------------- errors

fn assert_err(e: SaveFileError, ok: impl Fn(&SaveFileError) -> bool) {
    assert!(ok(&e), "unexpected error: {e:?}");
    assert!(e.is_invalid_input());
    assert!(!e.to_string().is_empty());
}

#[test]
fn header_errors() {
    let recs = records(&Spec::default());
    let spec = Spec {
        magic: *b"NotASaveFileAtAl",
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::BadMagic)
    });
    let spec = Spec {
        magic: *b"LibvirtQemudPart",
        ..Spec::default()
    };
    let e = err_with(&spec, &recs);
    assert_eq!(
        e.to_string(),
        "save file is incomplete (libvirt was still writing it)"
    );
    assert_err(e, |e| matches!(e, SaveFileError::Incomplete));
    let spec = Spec {
        compressed: 3,
        ..Spec::default()
    };
    let e = err_with(&spec, &recs);
    assert!(e.to_string().contains("save_image_format = \"raw\""));
    assert_err(e, |e| matches!(e, SaveFileError::Compressed { format: 3 }));
    let spec = Spec {
        libvirt_version: 3,
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::UnsupportedVersion { version: 3, .. })
    });
    let spec = Spec {
        data_len: Some(u32::MAX),
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(
            e,
            SaveFileError::TooLarge {
                what: "xml area",
                ..
            }
        )
    });
    let spec = Spec {
        data_len: Some(0),
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::BadXml { .. })
    });
}

#[test]
fn xml_area_errors() {
    let recs = records(&Spec::default());
    // No NUL before the cookie.
    let mut bytes = build(&Spec::default(), &recs).bytes;
    let xml_end = LIBVIRT_HEADER_BYTES + XML.len();
    bytes[xml_end] = b' ';
    assert_err(err_of(&bytes), |e| {
        matches!(e, SaveFileError::BadXml { .. })
    });
    // Not UTF-8.
    let mut bytes = build(&Spec::default(), &recs).bytes;
    bytes[LIBVIRT_HEADER_BYTES + 1] = 0xff;
    assert_err(err_of(&bytes), |e| {
        matches!(e, SaveFileError::BadXml { .. })
    });
    // Cookie offset beyond data_len.
    let mut bytes = build(&Spec::default(), &recs).bytes;
    bytes[32..36].copy_from_slice(&100_000u32.to_le_bytes());
    assert_err(err_of(&bytes), |e| {
        matches!(e, SaveFileError::BadXml { .. })
    });
}

#[test]
fn preamble_errors() {
    let recs = records(&Spec::default());
    let mut p = preamble(&[]);
    p[0] = b'X';
    let spec = Spec {
        preamble: p,
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::BadQemuMagic { .. })
    });
    let mut p = preamble(&[]);
    p[7] = 2;
    let spec = Spec {
        preamble: p,
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::UnsupportedVersion { version: 2, .. })
    });
    let mut caps = 1u32.to_be_bytes().to_vec();
    caps.push(15);
    caps.extend_from_slice(b"x-ignore-shared");
    let spec = Spec {
        preamble: preamble(&subsection("configuration/capabilities", &caps)),
        ..Spec::default()
    };
    assert_err(
        err_with(&spec, &recs),
        |e| matches!(e, SaveFileError::UnsupportedCapability { name } if name == "x-ignore-shared"),
    );
    let spec = Spec {
        preamble: preamble(&subsection(
            "configuration/target-page-bits",
            &16u32.to_be_bytes(),
        )),
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::BadConfiguration { .. })
    });
    let spec = Spec {
        preamble: preamble(&subsection("configuration/new-thing", &[])),
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::UnknownSubsection { .. })
    });
    let mut p = preamble(&[]);
    p[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
    let spec = Spec {
        preamble: p,
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::TooLarge { .. })
    });
}

#[test]
fn ram_start_errors() {
    let recs = records(&Spec::default());
    let spec = Spec {
        first_section_type: 0x04,
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(
            e,
            SaveFileError::UnexpectedSection {
                type_byte: 0x04,
                ..
            }
        )
    });
    let spec = Spec {
        ram_idstr: "block".to_owned(),
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::NotRamSection { .. })
    });
    let spec = Spec {
        ram_version: 3,
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::UnsupportedVersion { version: 3, .. })
    });
    // Block lengths exceeding MEM_SIZE.
    let spec = Spec {
        mem_size: Some(30 * 4096),
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::SizeMismatch { .. })
    });
    // MEM_SIZE larger than the blocks: the parser reads on into what follows and fails.
    let spec = Spec {
        mem_size: Some(40 * 4096),
        ..Spec::default()
    };
    assert!(err_with(&spec, &recs).is_invalid_input());
    let spec = Spec {
        mem_size: Some(1 << 50),
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(
            e,
            SaveFileError::TooLarge {
                what: "guest ram",
                ..
            }
        )
    });
    // (MEM_SIZE stays page-aligned: its low bits would read as flags.)
    let mut spec = Spec {
        mem_size: Some(40 * 4096),
        ..Spec::default()
    };
    spec.blocks[1].1 = 4096 * 4 + 512;
    assert_err(
        err_with(&spec, &recs),
        |e| matches!(e, SaveFileError::BlockNotPageAligned { name, length: 16896 } if name == "pc.bios"),
    );
    let mut spec = Spec::default();
    spec.blocks[2].0 = "pc.ram".to_owned();
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::DuplicateBlock { .. })
    });
    let mut spec = Spec::default();
    spec.blocks[2].0 = String::new();
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::BadBlockName { .. })
    });
    // A page record inside START, and a multifd flush record.
    let mut extra = (0x08u64).to_be_bytes().to_vec();
    extra.extend_from_slice(b"\x06pc.ram");
    let spec = Spec {
        start_extra: extra,
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::UnexpectedRecord { flags: 0x08, .. })
    });
    let spec = Spec {
        start_extra: 0x200u64.to_be_bytes().to_vec(),
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::UnknownPageFlags { flags: 0x200, .. })
    });
    let spec = Spec {
        footer_id: 9,
        ..Spec::default()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::BadFooter { section_id: 2, .. })
    });
}

#[test]
fn ram_record_errors() {
    let spec = Spec::default();
    let base = records(&spec);

    let mut recs = base.clone();
    recs[5].extra_flags = 0x40; // XBZRLE
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::UnknownPageFlags { .. })
    });
    let mut recs = base.clone();
    recs[5].extra_flags = 0x04; // MEM_SIZE with a page
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::UnexpectedRecord { .. })
    });

    let mut recs = base.clone();
    let dup = recs[3].clone();
    recs.insert(30, Record { cont: false, ..dup });
    let e = err_with(&spec, &recs);
    assert_err(e, |e| matches!(e, SaveFileError::DuplicatePage { .. }));

    let mut recs = base.clone();
    recs[4] = Record {
        block: "nvram".to_owned(),
        cont: false,
        ..recs[4].clone()
    };
    assert_err(
        err_with(&spec, &recs),
        |e| matches!(e, SaveFileError::BadBlock { name } if name == "nvram"),
    );

    let mut recs = base.clone();
    recs[4] = Record {
        block: "pc.bios".to_owned(),
        address: 4 * 4096,
        cont: false,
        ..recs[4].clone()
    };
    assert_err(err_with(&spec, &recs), |e| {
        matches!(
            e,
            SaveFileError::AddressOutOfRange {
                address: 16384,
                length: 16384,
                ..
            }
        )
    });

    let mut recs = base.clone();
    recs[0].cont = true;
    assert_err(err_with(&spec, &recs), |e| {
        matches!(e, SaveFileError::ContinueWithoutBlock { .. })
    });

    // A device section before the ram END.
    let spec2 = Spec {
        before_end: vec![0x04, 0, 0, 0, 7],
        ..Spec::default()
    };
    assert_err(err_with(&spec2, &base), |e| {
        matches!(
            e,
            SaveFileError::UnexpectedSection {
                type_byte: 0x04,
                ..
            }
        )
    });
    let spec2 = Spec {
        part_section_id: 5,
        footer_id: 5,
        ..Spec::default()
    };
    // The START footer is checked against START's id (2): make only PARTs differ.
    let mut built = build(&spec2, &base).bytes;
    let start_footer = find_start_footer(&built);
    built[start_footer + 1..start_footer + 5].copy_from_slice(&SECTION_ID.to_be_bytes());
    assert_err(err_of(&built), |e| {
        matches!(
            e,
            SaveFileError::WrongSectionId {
                expected: 2,
                found: 5,
                ..
            }
        )
    });

    let spec2 = Spec {
        device_state: Vec::new(),
        ..Spec::default()
    };
    assert_err(err_with(&spec2, &base), |e| {
        matches!(e, SaveFileError::EmptyDeviceState)
    });
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
        assert!(
            SaveFileLayout::from_bytes(&blob[..cut]).is_err(),
            "cut {cut}"
        );
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
    assert!(
        matches!(e, SaveFileError::BlockNotPageAligned { .. }),
        "{e}"
    );
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
