//! [`Hypervisor`]: every libvirt call of the workspace (the only `use ::virt` outside
//! tests), each run on tokio's blocking pool because libvirt's API blocks, some calls for
//! seconds (a save writes the whole guest RAM).
//!
//! **One connection per call.** Each method opens a connection, makes its calls and closes
//! it, all inside one `spawn_blocking` closure. A whole short call, connection included,
//! takes 1-2.5 ms over the local socket (measured by `daemon/tests/virt.rs`), against
//! 0.5-2 s for the calls that matter (start, save, restore, destroy). It buys: no lock
//! serializing a 2 s save behind a status query (a shared connection behind a `Mutex`
//! would), no reconnect logic when libvirtd restarts (the next call simply connects
//! again), and libvirt's thread-local "last error" is always read on the thread that made
//! the failing call. (libvirt connections are thread-safe, so a shared one without a
//! `Mutex` would work too, but keeping it alive and reconnecting is the code this avoids.)
//!
//! libvirt's default error handler prints every error to stderr; it is silenced once, the
//! errors reach the caller as [`VirtError`] instead.
//!
//! Pitfalls: `virt` 0.5 wraps no domain save, hence the one
//! `unsafe` call in `save_domain`; `qemu_monitor_command` needs the crate's `qemu`
//! feature (links libvirt-qemu); the `virt` wrappers panic on a NUL byte in some string
//! arguments, so every string is checked before it is handed over.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use ::virt::connect::Connect;
use ::virt::domain::Domain;
use ::virt::error::{Error as LibvirtError, ErrorNumber};
use ::virt::sys;

use super::{domain_xml, VirtError};

/// A libvirt hypervisor connection URI (`qemu:///system`) and the operations the daemon
/// needs on it. Cheap to clone; connects per call (see the module docs).
#[derive(Debug, Clone)]
pub struct Hypervisor {
    uri: Arc<str>,
}

impl Hypervisor {
    /// A hypervisor at `uri`; nothing is connected until the first call.
    pub fn new(uri: &str) -> Self {
        Self { uri: uri.into() }
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Connects and returns the versions, e.g. `libvirt 9.0.0 / QEMU 7.2.22`.
    pub async fn check(&self) -> Result<String, VirtError> {
        self.with_connection("connect", |conn| {
            let lib = conn.lib_version().map_err(libvirt("get library version"))?;
            let hyp = conn
                .hyp_version()
                .map_err(libvirt("get hypervisor version"))?;
            let driver = conn.driver_type().map_err(libvirt("get driver type"))?;
            Ok(format!(
                "libvirt {} / {driver} {}",
                version(lib),
                version(hyp)
            ))
        })
        .await
    }

    /// Starts a transient domain from `xml` (`virDomainCreateXML`): it disappears from
    /// libvirt when it is destroyed, saved or shut down.
    pub async fn start(&self, xml: &str) -> Result<(), VirtError> {
        let xml = no_nul("domain xml", xml)?;
        self.with_connection("start", move |conn| {
            conn.create_domain_xml(&xml, sys::VIR_DOMAIN_NONE)
                .map(drop)
                .map_err(libvirt("start"))
        })
        .await
    }

    /// Saves the running domain `name` to `path` (`virDomainSaveFlags`): guest paused,
    /// RAM and device state written with the domain XML, QEMU stopped. The domain is gone
    /// afterwards (a transient one entirely).
    pub async fn save(&self, name: &str, path: &Path) -> Result<(), VirtError> {
        let name = name.to_string();
        let path = c_path(path)?;
        self.with_connection("save", move |conn| {
            let dom = lookup(conn, &name)?;
            save_domain(&dom, &path).map_err(libvirt("save"))
        })
        .await
    }

    /// Restores the save file at `path` with the domain XML embedded in it (the engine
    /// writes files with the XML of the session) and leaves the domain running.
    pub async fn restore(&self, path: &Path) -> Result<(), VirtError> {
        self.restore_as(path, sys::VIR_DOMAIN_SAVE_RUNNING).await
    }

    /// Like [`Self::restore`], but leaves the domain paused: QEMU has loaded the memory,
    /// [`Self::resume`] runs the guest.
    pub async fn restore_paused(&self, path: &Path) -> Result<(), VirtError> {
        self.restore_as(path, sys::VIR_DOMAIN_SAVE_PAUSED).await
    }

    async fn restore_as(
        &self,
        path: &Path,
        flags: sys::virDomainSaveRestoreFlags,
    ) -> Result<(), VirtError> {
        let path = utf8_path(path)?;
        self.with_connection("restore", move |conn| {
            conn.restore_domain_flags(&path, None, flags)
                .map_err(libvirt("restore"))
        })
        .await
    }

    /// Runs paused domain `name` (`virDomainResume`).
    pub async fn resume(&self, name: &str) -> Result<(), VirtError> {
        let name = name.to_string();
        self.with_connection("resume", move |conn| {
            lookup(conn, &name)?.resume().map_err(libvirt("resume"))
        })
        .await
    }

    /// Stops domain `name` (`virDomainDestroy`, a power cut) and undefines it when it is
    /// persistent. `false` when no such domain existed.
    pub async fn destroy(&self, name: &str) -> Result<bool, VirtError> {
        let name = name.to_string();
        self.with_connection("destroy", move |conn| {
            let dom = match lookup(conn, &name) {
                Ok(dom) => dom,
                Err(VirtError::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(e),
            };
            // Asked before destroying: a destroyed transient domain no longer exists.
            let persistent = dom.is_persistent().map_err(libvirt("query persistence"))?;
            if dom.is_active().map_err(libvirt("query state"))? {
                match dom.destroy() {
                    Ok(()) => {}
                    // It stopped (or vanished) on its own in the meantime.
                    Err(e) if is_gone(&e) => {}
                    Err(e) => return Err(libvirt("destroy")(e)),
                }
            }
            if persistent {
                // Everything libvirt may keep beside a definition goes with it. Drivers
                // refuse flags they do not know (the test driver knows only the first
                // two) as an invalid argument: then retry with those two.
                let basic = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
                let all = basic
                    | sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                    | sys::VIR_DOMAIN_UNDEFINE_NVRAM;
                let result = match dom.undefine_flags(all) {
                    Err(e) if e.code().is(ErrorNumber::InvalidArg) => dom.undefine_flags(basic),
                    other => other,
                };
                match result {
                    Ok(()) => {}
                    Err(e) if e.code().is(ErrorNumber::NoDomain) => {}
                    Err(e) => return Err(libvirt("undefine")(e)),
                }
            }
            Ok(true)
        })
        .await
    }

    /// Whether domain `name` exists and runs (a paused domain counts as running).
    pub async fn is_running(&self, name: &str) -> Result<bool, VirtError> {
        let name = name.to_string();
        self.with_connection("query state", move |conn| match lookup(conn, &name) {
            Ok(dom) => match dom.is_active() {
                Ok(active) => Ok(active),
                Err(e) if e.code().is(ErrorNumber::NoDomain) => Ok(false),
                Err(e) => Err(libvirt("query state")(e)),
            },
            Err(VirtError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        })
        .await
    }

    /// Names of all domains, running or only defined, that start with `prefix`, sorted.
    /// The daemon names its VMs `cloudlet-<session id>` and uses this at start to find
    /// those that no live session owns.
    pub async fn list_with_prefix(&self, prefix: &str) -> Result<Vec<String>, VirtError> {
        let prefix = prefix.to_string();
        self.with_connection("list domains", move |conn| {
            let flags =
                sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE | sys::VIR_CONNECT_LIST_DOMAINS_INACTIVE;
            let domains = conn
                .list_all_domains(flags)
                .map_err(libvirt("list domains"))?;
            let mut names = Vec::new();
            for dom in domains {
                let name = dom.name().map_err(libvirt("get domain name"))?;
                if name.starts_with(&prefix) {
                    names.push(name);
                }
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    /// Runs a human monitor (HMP) command in domain `name`'s QEMU and returns its output.
    /// HMP reports most command failures as output text, not as an error: callers check it.
    pub async fn hmp(&self, name: &str, command: &str) -> Result<String, VirtError> {
        let name = name.to_string();
        let command = no_nul("monitor command", command)?;
        self.with_connection("monitor command", move |conn| {
            let dom = lookup(conn, &name)?;
            dom.qemu_monitor_command(&command, sys::VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
                .map_err(libvirt("monitor command"))
        })
        .await
    }

    /// The VNC port libvirt assigned to running domain `name` (from its live XML);
    /// `None` when it has no VNC display.
    pub async fn vnc_port(&self, name: &str) -> Result<Option<u16>, VirtError> {
        let name = name.to_string();
        let xml = self
            .with_connection("get domain xml", move |conn| {
                let dom = lookup(conn, &name)?;
                dom.xml_desc(0).map_err(libvirt("get domain xml"))
            })
            .await?;
        domain_xml::vnc_port(&xml)
    }

    /// The domain XML embedded in save file `path` (`virDomainSaveImageGetXMLDesc`).
    pub async fn save_image_xml(&self, path: &Path) -> Result<String, VirtError> {
        let path = utf8_path(path)?;
        self.with_connection("read save file xml", move |conn| {
            conn.save_image_xml_desc(&path, 0)
                .map_err(libvirt("read save file xml"))
        })
        .await
    }

    /// Opens a connection on the blocking pool and runs `f` with it there.
    async fn with_connection<T, F>(&self, op: &'static str, f: F) -> Result<T, VirtError>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T, VirtError> + Send + 'static,
    {
        let uri = no_nul("uri", &self.uri)?;
        tokio::task::spawn_blocking(move || {
            silence_default_error_handler();
            let conn = Connect::open(Some(&uri)).map_err(|e| VirtError::Libvirt {
                op,
                message: format!("cannot connect to {uri}: {}", e.message()),
            })?;
            f(&conn)
        })
        .await
        .map_err(VirtError::Task)?
    }
}

/// Saves `dom` to `path` with `virDomainSaveFlags` (no XML change, no flags), which the
/// `virt` crate does not wrap. The only `unsafe` of the daemon.
#[allow(unsafe_code)]
fn save_domain(dom: &Domain, path: &CString) -> Result<(), LibvirtError> {
    // SAFETY: `dom.as_ptr()` is the valid virDomainPtr owned by `dom`, which is borrowed
    // (so neither freed nor moved) for the whole call, and libvirt keeps no reference to
    // it after returning. `path` is a NUL-terminated string alive for the call; a NULL
    // `dxml` is documented as "keep the domain XML". The function has no other
    // preconditions; its errors are reported through libvirt's thread-local last error,
    // read right after on this same thread.
    let rc = unsafe { sys::virDomainSaveFlags(dom.as_ptr(), path.as_ptr(), std::ptr::null(), 0) };
    if rc < 0 {
        Err(LibvirtError::last_error())
    } else {
        Ok(())
    }
}

fn lookup(conn: &Connect, name: &str) -> Result<Domain, VirtError> {
    if name.contains('\0') {
        return Err(VirtError::InvalidArgument(
            "domain name contains a NUL byte".into(),
        ));
    }
    conn.lookup_domain_by_name(name).map_err(|e| {
        if e.code().is(ErrorNumber::NoDomain) {
            VirtError::NotFound { name: name.into() }
        } else {
            libvirt("look up domain")(e)
        }
    })
}

/// Whether a failed call means the domain is not there (any more) or not running.
fn is_gone(e: &LibvirtError) -> bool {
    e.code().is(ErrorNumber::NoDomain) || e.code().is(ErrorNumber::OperationInvalid)
}

fn libvirt(op: &'static str) -> impl Fn(LibvirtError) -> VirtError {
    move |e| VirtError::Libvirt {
        op,
        message: e.message().to_string(),
    }
}

fn silence_default_error_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(::virt::error::clear_error_callback);
}

/// libvirt encodes versions as major * 1,000,000 + minor * 1,000 + release.
fn version(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, v / 1_000 % 1_000, v % 1_000)
}

fn no_nul(what: &str, s: &str) -> Result<String, VirtError> {
    if s.contains('\0') {
        return Err(VirtError::InvalidArgument(format!(
            "{what} contains a NUL byte"
        )));
    }
    Ok(s.to_string())
}

/// libvirtd resolves relative paths against its own working directory: make them absolute.
fn absolute(path: &Path) -> Result<PathBuf, VirtError> {
    std::path::absolute(path).map_err(VirtError::Io)
}

fn utf8_path(path: &Path) -> Result<String, VirtError> {
    let path = absolute(path)?;
    let s = path.to_str().ok_or_else(|| {
        VirtError::InvalidArgument(format!("path {} is not UTF-8", path.display()))
    })?;
    no_nul("path", s)
}

fn c_path(path: &Path) -> Result<CString, VirtError> {
    CString::new(utf8_path(path)?)
        .map_err(|_| VirtError::InvalidArgument("path contains a NUL byte".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_decoded() {
        assert_eq!(version(9_000_000), "9.0.0");
        assert_eq!(version(7_002_022), "7.2.22");
    }

    #[test]
    fn bad_arguments_are_refused_before_libvirt() {
        assert!(matches!(
            no_nul("x", "a\0b"),
            Err(VirtError::InvalidArgument(_))
        ));
        assert!(utf8_path(Path::new("relative/file"))
            .unwrap()
            .starts_with('/'));
    }

    /// libvirt's built-in test driver, no daemon needed: check, list, start, save (the
    /// unsafe call), restore refused, destroy. Its state is shared by the connections of
    /// this process and lives while one is open, hence one test and `_hold`.
    #[tokio::test]
    async fn test_driver_lifecycle() {
        let _hold = Connect::open(Some("test:///default")).unwrap();
        let hv = Hypervisor::new("test:///default");
        let version = hv.check().await.unwrap();
        assert!(version.starts_with("libvirt "), "{version}");
        // The test driver starts with one running, persistent domain named "test".
        assert_eq!(hv.list_with_prefix("te").await.unwrap(), vec!["test"]);
        assert!(hv.list_with_prefix("cloudlet-").await.unwrap().is_empty());
        assert!(hv.is_running("test").await.unwrap());
        assert!(!hv.is_running("cloudlet-none").await.unwrap());
        assert!(matches!(
            hv.hmp("cloudlet-none", "info status").await,
            Err(VirtError::NotFound { .. })
        ));
        assert!(!hv.destroy("cloudlet-none").await.unwrap());
        // Running and persistent: destroyed and undefined.
        assert!(hv.destroy("test").await.unwrap());
        assert!(hv.list_with_prefix("").await.unwrap().is_empty());

        let dir = tempfile::tempdir().unwrap();
        let xml = "<domain type='test'><name>cloudlet-unit</name><memory>8192</memory>\
                   <os><type>hvm</type></os></domain>";
        hv.start(xml).await.unwrap();
        assert!(hv.is_running("cloudlet-unit").await.unwrap());
        assert_eq!(
            hv.list_with_prefix("cloudlet-").await.unwrap(),
            vec!["cloudlet-unit"]
        );
        assert!(matches!(
            hv.start(xml).await,
            Err(VirtError::Libvirt { op: "start", .. })
        ));
        assert_eq!(hv.vnc_port("cloudlet-unit").await.unwrap(), None);
        let save = dir.path().join("unit.save");
        hv.save("cloudlet-unit", &save).await.unwrap();
        assert!(save.exists());
        assert!(!hv.is_running("cloudlet-unit").await.unwrap());
        assert!(!hv.destroy("cloudlet-unit").await.unwrap());
        assert!(matches!(
            hv.save("cloudlet-unit", &save).await,
            Err(VirtError::NotFound { .. })
        ));
        // The test driver writes its own save format and knows no VIR_DOMAIN_SAVE_RUNNING.
        let restored = hv.restore(&save).await;
        assert!(
            matches!(restored, Err(VirtError::Libvirt { op: "restore", .. })),
            "{restored:?}"
        );
    }

    #[tokio::test]
    async fn unreachable_uri_is_a_libvirt_error() {
        let hv = Hypervisor::new("test:///no/such/file.xml");
        let err = hv.check().await.unwrap_err();
        assert!(
            matches!(err, VirtError::Libvirt { op: "connect", .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("libvirt connect failed"),
            "{err}"
        );
    }
}
