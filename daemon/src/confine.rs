//! Confined QEMU: every VM the daemon starts runs as an unprivileged uid of its own, and
//! no VM can read another session's files.
//!
//! The daemon owns a uid range (`vm_uid_first`, `vm_uid_count`) and a group (`vm_gid`).
//! A VM's work directory (`sessions/<id>/`, or `bases/<session id>/` while a base is
//! built) is created 0700 and owned by the lowest uid of the range that no other
//! directory there is owned by: the file system is the record of which uid is in use, so
//! a restart that re-adopts running VMs keeps their uids. Right before a VM starts, the
//! daemon gives it the files in its directory ([`Confinement::hand_over`]); its domain XML
//! carries a static DAC seclabel with `relabel='no'` ([`VmIdentity::seclabel`]): libvirt
//! runs QEMU under those ids and changes no file's owner, whatever the host's `qemu.conf`
//! says (`user`, `security_driver = "none"`, `dynamic_ownership`, `remember_owner`).
//! Libvirt itself (root) writes save files and binds the console socket, and opens a save
//! file for a restore, so those need no access by the VM.
//!
//! ```text
//! <data_dir>/          root 0711        (VM users may pass, not list)
//!   bases/             root 0711
//!     <base>/          root:vm_gid 0750 (files 0640: every VM reads, none writes)
//!   sessions/          root 0711
//!     <session>/       uid:vm_gid 0700  (only this VM)
//!   overlays/ incoming/ exports/ cloudlet.db   root 0700/0600 (no VM)
//! ```
//!
//! Where the host cannot confine (the daemon is not root, the file system refuses chown,
//! an account uses the range, a parent of the data directory is closed to other users),
//! `confinement = "auto"` logs a warning, reports it in `/health` and leaves the VMs to
//! libvirt's global user; `required` refuses to start.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::{Config, ConfinementMode, DomainType};
use crate::service::ServiceError;
use crate::store::DataDir;
use crate::virt::VmIdentity;

/// Errors of confinement.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// `confinement = "required"` and the host cannot confine; the text says why.
    #[error("confinement is required and unavailable: {0}")]
    Unavailable(String),
    /// Every uid of the range owns a running VM's directory.
    #[error("all {count} VM uids are in use (setting vm_uid_count)")]
    Exhausted {
        /// Size of the range.
        count: u32,
    },
    /// A file operation failed; `what` says which.
    #[error("{what}")]
    Io {
        /// The operation and path.
        what: String,
        /// Its error.
        #[source]
        source: io::Error,
    },
}

impl From<ConfineError> for ServiceError {
    fn from(e: ConfineError) -> Self {
        match e {
            ConfineError::Exhausted { .. } => ServiceError::Busy {
                what: e.to_string(),
                retry_after_s: 5,
            },
            other => ServiceError::failed("preparing the VM's directory", other),
        }
    }
}

/// The daemon's VM users: which ids, or why there are none.
#[derive(Debug)]
pub struct Confinement {
    ids: Option<IdRange>,
    warning: Option<String>,
    data: DataDir,
    /// Held while a uid is picked and its directory created, so two VMs never share one.
    claim: Mutex<()>,
}

/// The configured ids.
#[derive(Debug, Clone, Copy)]
struct IdRange {
    gid: u32,
    first: u32,
    count: u32,
}

impl IdRange {
    fn contains(self, uid: u32) -> bool {
        uid >= self.first && uid - self.first < self.count
    }
}

impl Confinement {
    /// Decides at start whether this host can confine the VMs, and opens the data
    /// directory's parents to the VM users when it can (0711: they may pass, not list).
    /// A host that cannot is a warning under `auto` and an error under `required`.
    pub fn set_up(config: &Config, data: &DataDir) -> Result<Self, ConfineError> {
        let ids = IdRange {
            gid: config.vm_gid,
            first: config.vm_uid_first,
            count: config.vm_uid_count,
        };
        let unconfined = |warning: String| Self {
            ids: None,
            warning: Some(warning),
            data: data.clone(),
            claim: Mutex::new(()),
        };
        if config.confinement == ConfinementMode::Off {
            return Ok(unconfined(
                "confinement = \"off\": the VMs run as libvirt's qemu.conf user".into(),
            ));
        }
        let kvm = config.domain_type == DomainType::Kvm;
        match check_host(ids, data).and_then(|()| open_kvm_to(ids, kvm)) {
            Ok(()) => {}
            Err(why) if config.confinement == ConfinementMode::Required => {
                return Err(ConfineError::Unavailable(why.to_string()));
            }
            Err(why) => {
                tracing::warn!(
                    "the VMs are not confined (they run as libvirt's qemu.conf user): {why}"
                );
                // /health needs no token: it says what is wrong, the log says where.
                return Ok(unconfined(format!(
                    "the VMs are not confined (they run as libvirt's qemu.conf user): {}; \
                     the daemon's log says more",
                    why.what
                )));
            }
        }
        for dir in [data.root().to_path_buf(), data.bases(), data.sessions()] {
            set_mode(&dir, 0o711)?;
        }
        tracing::info!(
            gid = ids.gid,
            uids = %format!("{}-{}", ids.first, ids.first + (ids.count - 1)),
            "VMs run as unprivileged uids of their own"
        );
        Ok(Self {
            ids: Some(ids),
            warning: None,
            data: data.clone(),
            claim: Mutex::new(()),
        })
    }

    /// What `/health` says about it.
    pub fn status(&self) -> cloudlet_api::Confinement {
        match self.ids {
            Some(ids) => cloudlet_api::Confinement {
                qemu_user: format!(
                    "uids {}-{}, gid {}",
                    ids.first,
                    ids.first + (ids.count - 1),
                    ids.gid
                ),
                isolated_sessions: true,
                warning: None,
            },
            None => cloudlet_api::Confinement {
                qemu_user: "libvirt qemu.conf user".into(),
                isolated_sessions: false,
                warning: self.warning.clone(),
            },
        }
    }

    /// Creates a VM's work directory: 0700 and owned by a uid no other VM has, when
    /// confined (the returned identity); a plain directory otherwise.
    pub fn create_vm_dir(&self, dir: &Path) -> Result<Option<VmIdentity>, ConfineError> {
        let create = |d: &Path| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(io_error("creating", d))
        };
        let Some(ids) = self.ids else {
            create(dir)?;
            return Ok(None);
        };
        // A poisoned lock guards no data: the file system is the record.
        let _held = self.claim.lock().unwrap_or_else(|p| p.into_inner());
        let used = self.uids_in_use(ids);
        let uid = (ids.first..ids.first + ids.count)
            .find(|u| !used.contains(u))
            .ok_or(ConfineError::Exhausted { count: ids.count })?;
        create(dir)?;
        std::os::unix::fs::chown(dir, Some(uid), Some(ids.gid))
            .map_err(io_error("giving a VM", dir))?;
        set_mode(dir, 0o700)?;
        Ok(Some(VmIdentity { uid, gid: ids.gid }))
    }

    /// The identity of the VM whose work directory is `dir` (its owner), when confined.
    pub fn identity_of(&self, dir: &Path) -> Option<VmIdentity> {
        let ids = self.ids?;
        let uid = std::fs::metadata(dir).ok()?.uid();
        ids.contains(uid)
            .then_some(VmIdentity { uid, gid: ids.gid })
    }

    /// Gives the VM of `dir` every file the daemon put there (disk, boot files), right
    /// before it starts. Nothing when not confined.
    pub fn hand_over(&self, dir: &Path) -> Result<(), ConfineError> {
        let Some(identity) = self.identity_of(dir) else {
            return Ok(());
        };
        for path in entries(dir)? {
            std::os::unix::fs::lchown(&path, Some(identity.uid), Some(identity.gid))
                .map_err(io_error("giving a VM", &path))?;
        }
        Ok(())
    }

    /// Makes a base's directory readable by every VM and writable by none (root:vm_gid,
    /// 0750, files 0640); run when a base is made and before a VM uses one (bases made
    /// or imported before confinement was on are root's only). Nothing when not confined.
    pub fn share_base(&self, dir: &Path) -> Result<(), ConfineError> {
        let Some(ids) = self.ids else { return Ok(()) };
        for path in entries(dir)? {
            let meta = std::fs::symlink_metadata(&path).map_err(io_error("reading", &path))?;
            if !meta.is_file() {
                continue; // a base VM's console socket, say: no VM needs it
            }
            std::os::unix::fs::chown(&path, Some(0), Some(ids.gid))
                .map_err(io_error("sharing", &path))?;
            set_mode(&path, 0o640)?;
        }
        std::os::unix::fs::chown(dir, Some(0), Some(ids.gid)).map_err(io_error("sharing", dir))?;
        set_mode(dir, 0o750)
    }

    /// Uids of the range owning a directory under `bases/` or `sessions/`.
    fn uids_in_use(&self, ids: IdRange) -> HashSet<u32> {
        [self.data.bases(), self.data.sessions()]
            .iter()
            .filter_map(|parent| std::fs::read_dir(parent).ok())
            .flatten()
            .filter_map(|entry| entry.ok()?.metadata().ok())
            .map(|meta| meta.uid())
            .filter(|uid| ids.contains(*uid))
            .collect()
    }
}

/// Why a host cannot confine: `what` names no path or account (it reaches `/health`),
/// `detail` does (the log, the start error).
#[derive(Debug)]
struct Refusal {
    what: &'static str,
    detail: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.detail)
    }
}

const CLOSED_PARENT: &str = "a parent of the data directory keeps other users out";
const NO_CHOWN: &str = "the daemon cannot give files to other users";

/// Why this host cannot confine the VMs, if it cannot.
fn check_host(ids: IdRange, data: &DataDir) -> Result<(), Refusal> {
    if let Some(detail) = accounts_in_range(ids) {
        return Err(Refusal {
            what: "a local account uses the VM uid range or group",
            detail,
        });
    }
    // Every parent of the data directory must let other users pass.
    let closed = |detail: String| Refusal {
        what: CLOSED_PARENT,
        detail,
    };
    let root = data
        .root()
        .canonicalize()
        .map_err(|e| closed(format!("cannot resolve {}: {e}", data.root().display())))?;
    for parent in root.ancestors().skip(1) {
        let mode = std::fs::metadata(parent)
            .map_err(|e| closed(format!("cannot read {}: {e}", parent.display())))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(closed(format!(
                "{} (mode {:o}) keeps the VM users from reaching the data directory \
                 (chmod o+x, or another data_dir)",
                parent.display(),
                mode & 0o7777
            )));
        }
    }
    // The daemon must be able to give files away (root, and a file system with owners).
    let probe = data.incoming().join(".confine-probe");
    let result = std::fs::write(&probe, b"")
        .and_then(|()| std::os::unix::fs::chown(&probe, Some(ids.first), Some(ids.gid)));
    let _ = std::fs::remove_file(&probe);
    result.map_err(|e| Refusal {
        what: NO_CHOWN,
        detail: format!(
            "cannot give a file to uid {} in {} ({e}): the daemon must run as root on a \
             file system that keeps owners",
            ids.first,
            data.root().display()
        ),
    })
}

/// With KVM, lets the VM group use `/dev/kvm` (see `devkvm`): a confined QEMU is in no
/// other group.
fn open_kvm_to(ids: IdRange, kvm: bool) -> Result<(), Refusal> {
    if !kvm {
        return Ok(());
    }
    let dev = Path::new("/dev/kvm");
    match crate::devkvm::grant_group(dev, ids.gid) {
        Ok(crate::devkvm::Grant::Already) => Ok(()),
        Ok(crate::devkvm::Grant::Added) => {
            tracing::info!(
                gid = ids.gid,
                "gave the VM group access to /dev/kvm (an ACL entry)"
            );
            Ok(())
        }
        Err(e) => Err(Refusal {
            what: "the VM group cannot be given access to /dev/kvm",
            detail: format!(
                "adding an ACL entry for gid {} to /dev/kvm: {e} (domain_type = \"kvm\" \
                 needs it, or confinement = \"off\")",
                ids.gid
            ),
        }),
    }
}

/// An account that uses the range or the group, named (`/etc/passwd`, `/etc/group`: the
/// local databases; ids from a directory service are not seen).
fn accounts_in_range(ids: IdRange) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let (Some(name), Some(uid), Some(gid)) = (fields.first(), fields.get(2), fields.get(3))
        else {
            continue;
        };
        if uid.parse().is_ok_and(|u| ids.contains(u)) {
            return Some(format!(
                "account {name} has uid {uid}, inside the VM uid range"
            ));
        }
        if gid.parse() == Ok(ids.gid) {
            return Some(format!(
                "account {name} has the VM group {gid} as its group"
            ));
        }
    }
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    for line in group.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if let (Some(name), Some(gid), Some(members)) =
            (fields.first(), fields.get(2), fields.get(3))
        {
            if gid.parse() == Ok(ids.gid) && !members.trim().is_empty() {
                return Some(format!("group {name} ({gid}) has members: {members}"));
            }
        }
    }
    None
}

/// The entries of a directory (not recursive: a VM's directory is flat).
fn entries(dir: &Path) -> Result<Vec<PathBuf>, ConfineError> {
    std::fs::read_dir(dir)
        .and_then(|it| it.map(|e| e.map(|e| e.path())).collect())
        .map_err(io_error("listing", dir))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ConfineError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_error("setting the mode of", path))
}

fn io_error(what: &'static str, path: &Path) -> impl Fn(io::Error) -> ConfineError {
    let what = format!("{what} {}", path.display());
    move |source| ConfineError::Io {
        what: what.clone(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: ConfinementMode) -> Config {
        Config {
            confinement: mode,
            vm_gid: 64500,
            vm_uid_first: 64501,
            vm_uid_count: 2,
            ..Config::default()
        }
    }

    /// A data directory whose parent has `mode`.
    fn data_under(mode: u32) -> (tempfile::TempDir, DataDir) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        let data = DataDir::create(&tmp.path().join("data")).unwrap();
        (tmp, data)
    }

    /// Needs root (chown); the e2e tests check the rest with real VMs.
    #[test]
    fn uids_are_given_once_and_freed_with_their_directory() {
        if std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(1)
            != 0
        {
            eprintln!("SKIPPED: giving files away needs root");
            return;
        }
        let (_tmp, data) = data_under(0o755);
        let c = Confinement::set_up(&config(ConfinementMode::Required), &data).unwrap();
        assert!(c.status().isolated_sessions, "{:?}", c.status());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(data.root()), 0o711);
        let a = c.create_vm_dir(&data.session_dir("a")).unwrap().unwrap();
        let b = c.create_vm_dir(&data.bases().join("b")).unwrap().unwrap();
        assert_eq!((a.uid, b.uid, a.gid), (64501, 64502, 64500));
        assert_eq!(mode(&data.session_dir("a")), 0o700);
        assert!(matches!(
            c.create_vm_dir(&data.session_dir("c")),
            Err(ConfineError::Exhausted { count: 2 })
        ));
        std::fs::write(data.session_dir("a").join("disk"), b"x").unwrap();
        c.hand_over(&data.session_dir("a")).unwrap();
        let disk = std::fs::metadata(data.session_dir("a").join("disk")).unwrap();
        assert_eq!((disk.uid(), disk.gid()), (64501, 64500));
        assert_eq!(c.identity_of(&data.session_dir("a")), Some(a));
        // A finished base is root's, readable by the group; its uid is free again.
        c.share_base(&data.bases().join("b")).unwrap();
        assert_eq!(mode(&data.bases().join("b")), 0o750);
        assert_eq!(c.identity_of(&data.bases().join("b")), None);
        let again = c.create_vm_dir(&data.session_dir("c")).unwrap().unwrap();
        assert_eq!(again.uid, 64502);
    }

    #[test]
    fn a_closed_parent_disables_it_or_refuses_to_start() {
        let (_tmp, data) = data_under(0o700); // a parent VM users cannot pass
        let c = Confinement::set_up(&config(ConfinementMode::Auto), &data).unwrap();
        let status = c.status();
        assert!(!status.isolated_sessions);
        let warning = status.warning.unwrap_or_default();
        assert!(warning.contains(CLOSED_PARENT), "{warning}");
        assert!(!warning.contains("/tmp"), "no path on /health: {warning}");
        assert_eq!(c.create_vm_dir(&data.session_dir("a")).unwrap(), None);
        let err = Confinement::set_up(&config(ConfinementMode::Required), &data).unwrap_err();
        assert!(
            err.to_string().contains("(mode 700) keeps the VM users"),
            "{err}"
        );
        let off = Confinement::set_up(&config(ConfinementMode::Off), &data).unwrap();
        assert!(off.status().warning.unwrap_or_default().contains("off"));
    }

    #[test]
    fn an_account_in_the_range_disables_it() {
        // root (uid 0, gid 0) is in every /etc/passwd.
        let root = IdRange {
            gid: 64500,
            first: 0,
            count: 1,
        };
        let found = accounts_in_range(root).unwrap_or_default();
        assert!(found.contains("root"), "{found}");
        let group = IdRange {
            gid: 0,
            first: 64501,
            count: 1,
        };
        assert!(accounts_in_range(group).is_some());
    }
}
