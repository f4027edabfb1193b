//! A strict reader of domain XML into a tree, and the comparison of two trees.
//!
//! It reads only the XML that libvirt itself writes: elements, attributes, text in leaf
//! elements and the five predefined entities (plus character references). CDATA,
//! comments, processing instructions, declarations, DOCTYPEs (and with them custom
//! entities), namespaced names (`qemu:commandline`, `xmlns:*`) and text beside child
//! elements are refused: libvirt never writes them, and each is a way to hide a value
//! from a reader that looks at text events only.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::VirtError;

/// Deepest nesting read (libvirt's domain XML is 5 levels deep).
const MAX_DEPTH: usize = 16;
/// Most elements read (a saved domain of the daemon has about 60).
const MAX_ELEMENTS: usize = 4096;

/// One element: its name, attributes (sorted, so that order never matters), its text (only
/// a leaf has any) and its children in document order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Element {
    pub name: String,
    pub attrs: BTreeMap<String, String>,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The value of attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }

    /// The children named `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The only child named `name`; `None` when there is none, an error when there are
    /// several.
    pub fn one(&self, name: &str) -> Result<Option<&Element>, VirtError> {
        let mut found = self.children.iter().filter(|c| c.name == name);
        let first = found.next();
        if found.next().is_some() {
            return Err(VirtError::Refused(format!(
                "<{}> has more than one <{name}>",
                self.name
            )));
        }
        Ok(first)
    }

    /// The only child named `name`, which must exist.
    pub fn required(&self, name: &str) -> Result<&Element, VirtError> {
        self.one(name)?
            .ok_or_else(|| VirtError::Refused(format!("<{}> has no <{name}>", self.name)))
    }

    /// The mutable children named `name`.
    pub fn all_mut<'a>(&'a mut self, name: &'a str) -> impl Iterator<Item = &'a mut Element> + 'a {
        self.children.iter_mut().filter(move |c| c.name == name)
    }
}

/// Reads `xml` into a tree; see the module docs for what is refused.
pub(super) fn parse(xml: &str) -> Result<Element, VirtError> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    let refuse = |what: &str| Err(VirtError::Refused(format!("contains {what}")));
    loop {
        let event = reader
            .read_event()
            .map_err(|e| VirtError::Xml(format!("not well formed: {e}")))?;
        match event {
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return refuse("a second root element");
            }
            Event::Start(e) => {
                count += 1;
                if count > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                    return refuse("too many or too deeply nested elements");
                }
                stack.push(element(&e)?);
            }
            Event::Empty(e) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return refuse("too many elements");
                }
                let el = element(&e)?;
                match stack.last_mut() {
                    Some(parent) => push_child(parent, el)?,
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let Some(done) = stack.pop() else {
                    return Err(VirtError::Xml("not well formed: unmatched end tag".into()));
                };
                match stack.last_mut() {
                    Some(parent) => push_child(parent, done)?,
                    None => root = Some(done),
                }
            }
            Event::Text(t) => {
                let text = t
                    .decode()
                    .map_err(|e| VirtError::Xml(format!("bad text: {e}")))?;
                push_text(stack.last_mut(), &text)?;
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        let name = r
                            .decode()
                            .map_err(|e| VirtError::Xml(format!("bad reference: {e}")))?;
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(s) => s.chars().next().unwrap_or('&'),
                            None => return refuse(&format!("the entity &{name};")),
                        }
                    }
                    Err(e) => return Err(VirtError::Xml(format!("bad reference: {e}"))),
                };
                push_text(stack.last_mut(), c.encode_utf8(&mut [0; 4]))?;
            }
            Event::CData(_) => return refuse("a CDATA section"),
            Event::Comment(_) => return refuse("a comment"),
            Event::PI(_) => return refuse("a processing instruction"),
            Event::Decl(_) => return refuse("an XML declaration"),
            Event::DocType(_) => return refuse("a DOCTYPE"),
            Event::Eof => break,
        }
    }
    if let Some(open) = stack.last() {
        return Err(VirtError::Xml(format!(
            "not well formed: <{}> is never closed",
            open.name
        )));
    }
    root.ok_or_else(|| VirtError::Xml("no root element".into()))
}

fn element(start: &BytesStart<'_>) -> Result<Element, VirtError> {
    let name = std::str::from_utf8(start.name().as_ref())
        .map_err(|_| VirtError::Xml("element name is not UTF-8".into()))?
        .to_string();
    plain_name(&name)?;
    let mut attrs = BTreeMap::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| VirtError::Xml(format!("bad attribute: {e}")))?;
        let key = std::str::from_utf8(attr.key.as_ref())
            .map_err(|_| VirtError::Xml("attribute name is not UTF-8".into()))?
            .to_string();
        plain_name(&key)?;
        let raw = std::str::from_utf8(&attr.value)
            .map_err(|_| VirtError::Xml("attribute is not UTF-8".into()))?;
        let value = quick_xml::escape::unescape(raw)
            .map_err(|e| VirtError::Refused(format!("attribute {key}: {e}")))?;
        attrs.insert(key, value.into_owned());
    }
    Ok(Element {
        name,
        attrs,
        ..Element::default()
    })
}

/// Refuses namespaced names (`qemu:commandline`, `xmlns`): libvirt reads them as
/// hypervisor pass-through.
fn plain_name(name: &str) -> Result<(), VirtError> {
    if name.contains(':') || name.starts_with("xmlns") {
        return Err(VirtError::Refused(format!(
            "uses the namespaced name {name}"
        )));
    }
    Ok(())
}

fn push_child(parent: &mut Element, child: Element) -> Result<(), VirtError> {
    if !parent.text.trim().is_empty() {
        return Err(VirtError::Refused(format!(
            "<{}> has both text and elements",
            parent.name
        )));
    }
    parent.text.clear();
    parent.children.push(child);
    Ok(())
}

fn push_text(parent: Option<&mut Element>, text: &str) -> Result<(), VirtError> {
    let Some(parent) = parent else {
        if text.trim().is_empty() {
            return Ok(());
        }
        return Err(VirtError::Xml("text outside the root element".into()));
    };
    if !parent.children.is_empty() {
        if text.trim().is_empty() {
            return Ok(());
        }
        return Err(VirtError::Refused(format!(
            "<{}> has both text and elements",
            parent.name
        )));
    }
    parent.text.push_str(text);
    Ok(())
}

/// The first place where `found` differs from `expected`, described for an error message;
/// `None` when they are equal. Whitespace-only text (indentation) never counts.
pub(super) fn first_difference(found: &Element, expected: &Element) -> Option<String> {
    difference(found, expected, &mut String::from("/"))
}

fn difference(found: &Element, expected: &Element, path: &mut String) -> Option<String> {
    let _ = write!(path, "{}", expected.name);
    if found.name != expected.name {
        return Some(format!(
            "at {path}: <{}> where <{}> belongs",
            found.name, expected.name
        ));
    }
    for (key, value) in &found.attrs {
        match expected.attrs.get(key) {
            None => {
                return Some(format!(
                    "at {path}: attribute {key}='{value}' is not allowed"
                ))
            }
            Some(want) if want != value => {
                return Some(format!(
                    "at {path}: attribute {key}='{value}' where '{want}' belongs"
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(key) = expected
        .attrs
        .keys()
        .find(|k| !found.attrs.contains_key(*k))
    {
        return Some(format!("at {path}: attribute {key} is missing"));
    }
    if found.text.trim() != expected.text.trim() {
        return Some(format!(
            "at {path}: text '{}' where '{}' belongs",
            found.text.trim(),
            expected.text.trim()
        ));
    }
    for (i, pair) in found
        .children
        .iter()
        .zip(expected.children.iter())
        .enumerate()
    {
        let len = path.len();
        let _ = write!(path, "[{i}]/");
        if let Some(d) = difference(pair.0, pair.1, path) {
            return Some(d);
        }
        path.truncate(len);
    }
    let n = expected.children.len();
    if let Some(extra) = found.children.get(n) {
        return Some(format!("at {path}: <{}> is not allowed", extra.name));
    }
    if let Some(missing) = expected.children.get(found.children.len()) {
        return Some(format!("at {path}: <{}> is missing", missing.name));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_elements_attributes_and_text() {
        let t = parse(
            "<domain type='qemu'>\n  <name>a&amp;b&#x41;</name>\n  \
             <devices><disk x=\"1&lt;2\"/></devices>\n</domain>",
        )
        .unwrap();
        assert_eq!(t.name, "domain");
        assert_eq!(t.attr("type"), Some("qemu"));
        assert_eq!(t.required("name").unwrap().text, "a&bA");
        let disk = t.required("devices").unwrap().required("disk").unwrap();
        assert_eq!(disk.attr("x"), Some("1<2"));
        assert!(t.one("os").unwrap().is_none());
    }

    #[test]
    fn refuses_what_libvirt_never_writes() {
        let cases = [
            (
                "<domain><kernel><![CDATA[/etc/shadow]]></kernel></domain>",
                "CDATA",
            ),
            ("<domain><!-- x --></domain>", "comment"),
            ("<?xml version='1.0'?><domain/>", "declaration"),
            ("<domain><?pi x?></domain>", "processing instruction"),
            (
                "<!DOCTYPE d [<!ENTITY e '/etc/shadow'>]><domain/>",
                "DOCTYPE",
            ),
            ("<domain><kernel>&e;</kernel></domain>", "entity"),
            ("<domain><qemu:commandline/></domain>", "namespaced"),
            ("<domain xmlns:qemu='x'/>", "namespaced"),
            ("<domain>text<name/></domain>", "both text and elements"),
            ("<domain><name/>text</domain>", "both text and elements"),
            ("<domain/><domain/>", "second root"),
        ];
        for (xml, want) in cases {
            let err = parse(xml).unwrap_err();
            assert!(err.to_string().contains(want), "{xml}: {err}");
            assert!(err.is_invalid_input());
        }
        assert!(parse("<domain><name>a</nom></domain>").is_err());
        assert!(parse("<domain><name>").is_err());
        assert!(parse("").is_err());
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn differences_are_located() {
        let a = parse("<d><x k='1'/><y>t</y></d>").unwrap();
        assert_eq!(first_difference(&a, &a.clone()), None);
        let order = parse("<d>\n  <x   k=\"1\" />\n  <y>t</y>\n</d>").unwrap();
        assert_eq!(first_difference(&order, &a), None);
        let cases = [
            (
                "<d><x k='2'/><y>t</y></d>",
                "/d[0]/x: attribute k='2' where '1'",
            ),
            (
                "<d><x k='1' j='0'/><y>t</y></d>",
                "attribute j='0' is not allowed",
            ),
            ("<d><x/><y>t</y></d>", "attribute k is missing"),
            ("<d><x k='1'/><y>u</y></d>", "text 'u' where 't'"),
            ("<d><x k='1'/><y>t</y><z/></d>", "<z> is not allowed"),
            ("<d><x k='1'/></d>", "<y> is missing"),
            ("<d><y>t</y><x k='1'/></d>", "<y> where <x> belongs"),
        ];
        for (xml, want) in cases {
            let b = parse(xml).unwrap();
            let d = first_difference(&b, &a).unwrap();
            assert!(d.contains(want), "{xml}: {d}");
        }
    }
}
