//! Test-only edits of a libvirt domain XML (rename, retarget the disk and console). The
//! daemon renders its own domain XML from a template; tests that drive libvirt directly
//! need these few edits.

/// Replaces the text of the first `<tag>...</tag>`.
pub fn set_element_text(xml: &str, tag: &str, text: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    match (xml.find(&open), xml.find(&close)) {
        (Some(a), Some(b)) if a < b => format!("{}{open}{text}{}", &xml[..a], &xml[b..]),
        _ => xml.to_string(),
    }
}

/// Removes every `<backingStore/>` or `<backingStore ...>...</backingStore>` element: an
/// empty one tells libvirt the qcow2 has no backing file (the guest then reads zeros),
/// a stale one points at another run's files.
pub fn remove_backing_store(xml: &str) -> String {
    let mut out = xml.to_string();
    while let Some(start) = out.find("<backingStore") {
        let rest = &out[start..];
        let end = if let Some(e) = rest.find("/>").filter(|&e| !rest[..e].contains('>')) {
            e + 2
        } else if let Some(e) = rest.find("</backingStore>") {
            e + "</backingStore>".len()
        } else {
            break;
        };
        out.replace_range(start..start + end, "");
    }
    out
}

/// Points the first disk at `path` with driver type `format` (raw or qcow2).
pub fn set_disk(xml: &str, path: &str, format: &str) -> String {
    let Some(disk_start) = xml.find("<disk ") else {
        return xml.to_string();
    };
    let Some(disk_len) = xml[disk_start..].find("</disk>") else {
        return xml.to_string();
    };
    let disk = &xml[disk_start..disk_start + disk_len];
    let mut new_disk = remove_backing_store(disk);
    new_disk = replace_attr(&new_disk, "<driver ", "type", format);
    new_disk = replace_attr(&new_disk, "<source ", "file", path);
    format!(
        "{}{}{}",
        &xml[..disk_start],
        new_disk,
        &xml[disk_start + disk_len..]
    )
}

/// Points every Unix-socket source (serial and console) at `path`.
pub fn set_console_socket(xml: &str, path: &str) -> String {
    let mut out = String::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<source mode='bind' path='") {
        let head = i + "<source mode='bind' path='".len();
        out.push_str(&rest[..head]);
        out.push_str(path);
        rest = &rest[head..];
        rest = &rest[rest.find('\'').unwrap_or(0)..];
    }
    out.push_str(rest);
    out
}

fn replace_attr(xml: &str, element: &str, attr: &str, value: &str) -> String {
    let Some(e) = xml.find(element) else {
        return xml.to_string();
    };
    let Some(end) = xml[e..].find('>') else {
        return xml.to_string();
    };
    let tag = &xml[e..e + end];
    let key = format!("{attr}='");
    let Some(a) = tag.find(&key) else {
        return xml.to_string();
    };
    let v_start = e + a + key.len();
    let Some(v_len) = xml[v_start..].find('\'') else {
        return xml.to_string();
    };
    format!("{}{}{}", &xml[..v_start], value, &xml[v_start + v_len..])
}

/// The domain XML stored in a save file, retargeted to a new name (and a fresh UUID), a
/// disk of `format`, and a console socket.
pub fn retarget_saved(
    save: &std::path::Path,
    name: &str,
    disk: &std::path::Path,
    format: &str,
    console: &std::path::Path,
) -> anyhow::Result<String> {
    use cloudlet_engine::savefile::SaveFileReader;
    let reader = SaveFileReader::open(std::io::BufReader::new(std::fs::File::open(save)?))?;
    let original = reader.layout().domain_xml()?.to_string();
    let x = set_element_text(&original, "name", name);
    let x = set_element_text(&x, "uuid", &crate::random_uuid());
    let x = set_disk(&x, &disk.display().to_string(), format);
    Ok(set_console_socket(&x, &console.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<domain><name>a</name><uuid>u</uuid><devices>\
        <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/x/disk.img'/>\
        <backingStore/><target dev='vda' bus='virtio'/></disk>\
        <serial type='unix'><source mode='bind' path='/x/c.sock'/></serial>\
        <console type='unix'><source mode='bind' path='/x/c.sock'/></console></devices></domain>";

    #[test]
    fn edits() {
        let x = set_element_text(XML, "name", "b");
        assert!(x.contains("<name>b</name>"));
        let x = set_disk(&x, "/y/o.qcow2", "qcow2");
        assert!(
            x.contains("<driver name='qemu' type='qcow2'/><source file='/y/o.qcow2'/><target"),
            "{x}"
        );
        assert!(!x.contains("backingStore"));
        let x = set_console_socket(&x, "/y/s.sock");
        assert_eq!(x.matches("/y/s.sock").count(), 2);
        assert!(!x.contains("/x/c.sock"));
        let nested = "<disk ><backingStore type='file'><source file='b'/></backingStore></disk>";
        assert_eq!(remove_backing_store(nested), "<disk ></disk>");
    }
}
