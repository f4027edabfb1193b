//! Confined VMs and KVM. On a KVM host `/dev/kvm` is `root:kvm 0660`, and a confined
//! QEMU runs as a uid and group of the daemon's own (see `confine`), outside `kvm`:
//! libvirt gives it no supplementary groups, so QEMU fails with "Could not access KVM
//! kernel module: Permission denied". The daemon gives its VM group read-write access
//! to the device with a POSIX ACL entry, leaving owner, group and mode as they are.
//! libvirt copies a device's ACL into each VM's private `/dev`, so the entry reaches
//! QEMU. (A devtmpfs ACL lasts until the device node is made again, at boot: the daemon
//! sets it at every start.)
//!
//! The ACL travels as the `system.posix_acl_access` extended attribute: a 4-byte version
//! (2), then 8-byte entries `(tag: u16, perm: u16, id: u32)` sorted by tag then id (tags:
//! owner 1, named user 2, owning group 4, named group 8, mask 0x10, others 0x20).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const XATTR: &str = "system.posix_acl_access";
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
/// The id of an entry that names no one (owner, owning group, mask, others).
const NO_ID: u32 = u32::MAX;
/// Read and write.
const RW: u16 = 0o6;

/// What [`grant_group`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Grant {
    /// The group could already read and write the device.
    Already,
    /// An ACL entry now lets it.
    Added,
}

/// Lets group `gid` read and write `dev` (adding an ACL entry if it cannot yet).
pub fn grant_group(dev: &Path, gid: u32) -> io::Result<Grant> {
    let meta = std::fs::metadata(dev)?;
    // Far more than any device's ACL (8 bytes an entry).
    let mut buf = [0u8; 4096];
    let acl = match rustix::fs::getxattr(dev, XATTR, &mut buf[..]) {
        Ok(n) => Acl::parse(&buf[..n])?,
        Err(rustix::io::Errno::NODATA) => Acl::from_mode(meta.mode()),
        Err(e) => return Err(e.into()),
    };
    if acl.allows_group(meta.gid(), gid, RW) {
        return Ok(Grant::Already);
    }
    let granted = acl.with_group(gid, RW);
    rustix::fs::setxattr(
        dev,
        XATTR,
        &granted.encode(),
        rustix::fs::XattrFlags::empty(),
    )?;
    Ok(Grant::Added)
}

/// A parsed access ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Acl(Vec<(u16, u16, u32)>);

impl Acl {
    /// The ACL a plain mode stands for.
    fn from_mode(mode: u32) -> Self {
        // Masked to three bits each: the casts cannot truncate.
        let bits = |shift: u32| ((mode >> shift) & 0o7) as u16;
        Acl(vec![
            (USER_OBJ, bits(6), NO_ID),
            (GROUP_OBJ, bits(3), NO_ID),
            (OTHER, bits(0), NO_ID),
        ])
    }

    fn parse(bytes: &[u8]) -> io::Result<Self> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("ACL: {why}"));
        let (head, rest) = bytes.split_at_checked(4).ok_or_else(|| bad("too short"))?;
        if u32::from_le_bytes(head.try_into().map_err(|_| bad("header"))?) != VERSION {
            return Err(bad("unknown version"));
        }
        if rest.len() % 8 != 0 {
            return Err(bad("a partial entry"));
        }
        let entries = rest
            .chunks_exact(8)
            .map(|e| {
                (
                    u16::from_le_bytes([e[0], e[1]]),
                    u16::from_le_bytes([e[2], e[3]]),
                    u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                )
            })
            .collect();
        Ok(Acl(entries))
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in &self.0 {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&perm.to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    fn perm(&self, tag: u16, id: u32) -> Option<u16> {
        self.0
            .iter()
            .find(|(t, _, i)| *t == tag && *i == id)
            .map(|(_, p, _)| *p)
    }

    /// Whether a member of `gid` (and of no other group) gets `want` on a file whose
    /// owning group is `file_gid`.
    fn allows_group(&self, file_gid: u32, gid: u32, want: u16) -> bool {
        let has = |p: Option<u16>| p.is_some_and(|p| p & want == want);
        if has(self.perm(OTHER, NO_ID)) {
            return true;
        }
        // With a mask, the owning group and named entries get at most the mask.
        let mask = self.perm(MASK, NO_ID).unwrap_or(0o7);
        let masked = |p: Option<u16>| has(p.map(|p| p & mask));
        (file_gid == gid && masked(self.perm(GROUP_OBJ, NO_ID))) || masked(self.perm(GROUP, gid))
    }

    /// This ACL plus `perm` for group `gid`, with a mask that lets it through and lets
    /// no one else more than before.
    fn with_group(&self, gid: u32, perm: u16) -> Acl {
        let mut entries: Vec<(u16, u16, u32)> = self
            .0
            .iter()
            .filter(|(t, _, i)| !(*t == GROUP && *i == gid))
            .copied()
            .collect();
        let old_perm = self.perm(GROUP, gid).unwrap_or(0);
        entries.push((GROUP, old_perm | perm, gid));
        let mask = match self.perm(MASK, NO_ID) {
            Some(mask) => mask | perm,
            // No mask yet: the owning group's bits were its effective rights; keep them.
            None => self.perm(GROUP_OBJ, NO_ID).unwrap_or(0) | old_perm | perm,
        };
        entries.retain(|(t, _, _)| *t != MASK);
        entries.push((MASK, mask, NO_ID));
        entries.sort_by_key(|(t, _, i)| (*t, *i));
        Acl(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_kvm_device_gets_an_entry_for_the_vm_group() {
        let acl = Acl::from_mode(0o20660);
        assert!(!acl.allows_group(994, 64000, RW));
        assert!(acl.allows_group(994, 994, RW), "the kvm group itself");
        let granted = acl.with_group(64000, RW);
        assert!(granted.allows_group(994, 64000, RW));
        assert_eq!(
            granted.0,
            vec![
                (USER_OBJ, 0o6, NO_ID),
                (GROUP_OBJ, 0o6, NO_ID),
                (GROUP, 0o6, 64000),
                (MASK, 0o6, NO_ID),
                (OTHER, 0, NO_ID),
            ]
        );
        // Byte layout: version 2, then (tag, perm, id) little-endian.
        let bytes = granted.encode();
        assert_eq!(&bytes[..4], &[2, 0, 0, 0]);
        assert_eq!(&bytes[4..12], &[1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(&bytes[20..28], &[8, 0, 6, 0, 0x00, 0xfa, 0, 0]);
        assert_eq!(Acl::parse(&bytes).unwrap(), granted);
    }

    #[test]
    fn nothing_is_added_where_the_group_already_has_access() {
        assert!(
            Acl::from_mode(0o666).allows_group(0, 64000, RW),
            "others rw"
        );
        assert!(
            Acl::from_mode(0o660).allows_group(64000, 64000, RW),
            "owning group"
        );
        let granted = Acl::from_mode(0o600).with_group(64000, RW);
        assert!(granted.allows_group(0, 64000, RW));
    }

    #[test]
    fn a_narrow_mask_is_widened_only_by_what_is_granted() {
        // Owning group rwx but masked to r; another named group r.
        let acl = Acl(vec![
            (USER_OBJ, 0o6, NO_ID),
            (GROUP_OBJ, 0o7, NO_ID),
            (GROUP, 0o4, 5),
            (MASK, 0o4, NO_ID),
            (OTHER, 0, NO_ID),
        ]);
        assert!(!acl.allows_group(7, 64000, RW));
        let granted = acl.with_group(64000, RW);
        assert_eq!(
            granted.perm(MASK, NO_ID),
            Some(0o6),
            "not 0o7: x stays masked"
        );
        assert!(granted.allows_group(7, 64000, RW));
        // A masked entry for the group is not access.
        let masked = Acl(vec![
            (USER_OBJ, 0o6, NO_ID),
            (GROUP_OBJ, 0, NO_ID),
            (GROUP, 0o6, 64000),
            (MASK, 0, NO_ID),
            (OTHER, 0, NO_ID),
        ]);
        assert!(!masked.allows_group(0, 64000, RW));
    }

    #[test]
    fn damaged_acls_are_errors() {
        assert!(Acl::parse(&[2, 0]).is_err());
        assert!(Acl::parse(&[3, 0, 0, 0]).is_err());
        assert!(Acl::parse(&[2, 0, 0, 0, 1, 0, 6]).is_err());
    }

    #[test]
    fn a_file_gets_its_entry_for_real() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dev");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        match grant_group(&file, 64000) {
            Ok(grant) => assert_eq!(grant, Grant::Added),
            // A file system without ACLs (some tmpfs builds): nothing to check here.
            Err(e) if e.raw_os_error() == Some(95) => {
                eprintln!("SKIPPED: {} has no POSIX ACLs", dir.path().display());
                return;
            }
            Err(e) => panic!("{e}"),
        }
        assert_eq!(grant_group(&file, 64000).unwrap(), Grant::Already);
        let mode = std::fs::metadata(&file).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o660, "the group bits show the mask");
    }
}
