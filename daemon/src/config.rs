//! Daemon configuration: defaults < TOML file < `CLOUDLET_*` environment variables.
//! Validated once at load; every error names the setting.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default config file location.
///
/// Example file (every key optional):
///
/// ```toml
/// listen = "127.0.0.1:8021"
/// data_dir = "/var/lib/cloudlet"
/// libvirt_uri = "qemu:///system"
/// domain_type = "kvm"        # or "qemu" (TCG)
/// log_format = "text"        # or "json"
/// zstd_level = 3
/// threads = 0
/// import_dirs = ["/srv/images"]
/// token_file = "/etc/cloudlet/token"
/// max_upload_bytes = 68719476736
/// max_import_bytes = 0       # 0: what the archive declares and the data disk has free
/// max_concurrent_syntheses = 2
/// request_timeout_s = 3600
/// body_idle_timeout_s = 60
/// idempotency_window_s = 86400
/// header_timeout_s = 30
/// max_connections = 512
/// libvirt_timeout_s = 30
/// stream_stall_timeout_s = 60
/// overlay_url_allow = ["https://overlays.example.org", "http://10.0.0.5:8000"]
/// tls = "auto"               # or "on", or "off" (plain HTTP even off loopback: loud)
/// tls_cert = "/etc/cloudlet/cert.pem"
/// tls_key = "/etc/cloudlet/key.pem"
/// ```
pub const DEFAULT_CONFIG_PATH: &str = "/etc/cloudlet/cloudletd.toml";

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config.
    #[error("config file {path} is invalid")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A setting has an unusable value.
    #[error("setting `{key}`: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// Why it is refused.
        reason: String,
    },
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (journald, log shippers).
    Json,
}

/// libvirt domain type for the VMs the daemon runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    /// Hardware virtualization (`/dev/kvm`).
    Kvm,
    /// Software emulation (TCG): slower, but works where nested KVM does not.
    Qemu,
}

impl std::fmt::Display for DomainType {
    /// `kvm` or `qemu`, as in the config file.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
        })
    }
}

/// When the API is served over TLS (docs/api.md, "Transport security").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS when `tls_cert` is set or `listen` is not a loopback address (then with a
    /// self-signed certificate if none is configured); plain HTTP on loopback.
    #[default]
    Auto,
    /// TLS always, loopback included.
    On,
    /// Plain HTTP always: on a non-loopback address the token crosses the network in
    /// clear text, so the daemon warns at start and `/health` says `insecure`.
    Off,
}

impl std::fmt::Display for TlsMode {
    /// `auto`, `on` or `off`, as in the config file.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsMode::Auto => "auto",
            TlsMode::On => "on",
            TlsMode::Off => "off",
        })
    }
}

/// Whether the VMs' QEMU runs as the daemon's unprivileged VM users (see `crate::confine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfinementMode {
    /// Confined when the host allows it; otherwise a warning (log and `/health`) and
    /// the VMs run as libvirt's global `qemu.conf` user.
    #[default]
    Auto,
    /// Confined, or the daemon refuses to start.
    Required,
    /// Not confined: libvirt's global `qemu.conf` user (`/health` says so).
    Off,
}

impl std::str::FromStr for ConfinementMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "required" => Ok(Self::Required),
            "off" => Ok(Self::Off),
            _ => Err(format!("`{s}` is not auto, required or off")),
        }
    }
}

/// Whether a VM's memory moves between libvirt and the daemon through a FIFO as it is
/// produced (see `service::stream_restore` and `service::stream_save`) or through a
/// complete save file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamMode {
    /// Streamed; when libvirt refuses the FIFO before any of the VM's memory moved, a save
    /// file instead.
    #[default]
    Auto,
    /// Streamed, or the operation fails.
    On,
    /// A complete save file is written, then read (the guest's RAM size on disk).
    Off,
}

impl std::str::FromStr for StreamMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err(format!("`{s}` is not auto, on or off")),
        }
    }
}

/// Everything the daemon can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on (`CLOUDLET_LISTEN`). Loopback by default.
    pub listen: SocketAddr,
    /// Directory the daemon owns: database, base images, overlays, sessions
    /// (`CLOUDLET_DATA_DIR`).
    pub data_dir: PathBuf,
    /// libvirt connection URI (`CLOUDLET_LIBVIRT_URI`).
    pub libvirt_uri: String,
    /// Domain type of the VMs: `kvm` or `qemu` (`CLOUDLET_DOMAIN_TYPE`).
    pub domain_type: DomainType,
    /// Log lines as `text` or `json` (`CLOUDLET_LOG_FORMAT`); the level comes from
    /// `CLOUDLET_LOG` (e.g. `info`, `debug`, `info,cloudletd::access=warn`).
    pub log_format: LogFormat,
    /// zstd level of overlay payloads, 1..=19 (`CLOUDLET_ZSTD_LEVEL`).
    pub zstd_level: i32,
    /// Worker threads for encoding and decoding, 0 = one per core (`CLOUDLET_THREADS`).
    pub threads: usize,
    /// Directories a request may name local files in (disk images, kernels, save files,
    /// overlays); nothing outside them is read on a request's behalf
    /// (`CLOUDLET_IMPORT_DIRS`, colon-separated). Empty: no local imports.
    pub import_dirs: Vec<PathBuf>,
    /// File holding the API bearer token; created (mode 0600) on first start
    /// (`CLOUDLET_TOKEN_FILE`).
    pub token_file: PathBuf,
    /// Largest request body accepted: overlay, base archive or file upload
    /// (`CLOUDLET_MAX_UPLOAD_BYTES`). Larger ones get 413.
    pub max_upload_bytes: u64,
    /// Most bytes an imported base archive may expand to: the sum of its files' declared
    /// sizes, refused (413) before anything is written (`CLOUDLET_MAX_IMPORT_BYTES`).
    /// 0: no fixed cap; the data the files hold (all-zero blocks are written as holes)
    /// must still fit in the data disk's free space (507).
    pub max_import_bytes: u64,
    /// Syntheses running at once; more get 503 with Retry-After
    /// (`CLOUDLET_MAX_CONCURRENT_SYNTHESES`).
    pub max_concurrent_syntheses: usize,
    /// Longest a request may take, uploads included (`CLOUDLET_REQUEST_TIMEOUT_S`).
    pub request_timeout_s: u64,
    /// Longest a request body may stall before the request is dropped
    /// (`CLOUDLET_BODY_IDLE_TIMEOUT_S`).
    pub body_idle_timeout_s: u64,
    /// How long an `Idempotency-Key` of `POST /synthesis*` names the session it started
    /// (`CLOUDLET_IDEMPOTENCY_WINDOW_S`).
    pub idempotency_window_s: u64,
    /// Longest a connection may take to send a request's headers, counted from when the
    /// daemon waits for them: on a new connection and between requests of a kept-alive
    /// one, so it also closes idle connections (`CLOUDLET_HEADER_TIMEOUT_S`).
    pub header_timeout_s: u64,
    /// Connections open at once; more are answered 503 and closed
    /// (`CLOUDLET_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Longest the daemon waits for libvirt at start, per call (`CLOUDLET_LIBVIRT_TIMEOUT_S`):
    /// a wedged libvirtd then costs a warning, not an unreachable daemon.
    pub libvirt_timeout_s: u64,
    /// Overlay URLs the daemon may fetch for synthesis: each entry is a
    /// `scheme://host[:port]` origin (`CLOUDLET_OVERLAY_URL_ALLOW`, comma-separated).
    /// Empty: fetching by URL is refused.
    pub overlay_url_allow: Vec<String>,
    /// IPv4 address the VMs' forwarded guest ports listen on (`CLOUDLET_PORTS_ADDRESS`).
    /// Unset: the API's own address (`listen`), so that whoever can reach the API can
    /// reach the apps it starts; 127.0.0.1 when that is IPv6 other than `[::]`.
    pub ports_address: Option<Ipv4Addr>,
    /// When to serve TLS: `auto`, `on` or `off` (`CLOUDLET_TLS`).
    pub tls: TlsMode,
    /// PEM certificate chain of the API, leaf first (`CLOUDLET_TLS_CERT`). Unset: with
    /// TLS, a self-signed certificate made on first start next to `token_file`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (`CLOUDLET_TLS_KEY`); set both or neither.
    pub tls_key: Option<PathBuf>,
    /// Whether each VM's QEMU runs as an unprivileged uid of its own
    /// (`CLOUDLET_CONFINEMENT`: `auto`, `required` or `off`).
    pub confinement: ConfinementMode,
    /// Group every confined VM runs with; it may read the base files
    /// (`CLOUDLET_VM_GID`). Not 0; no account should use it.
    pub vm_gid: u32,
    /// First uid of the range the daemon gives its VMs, one per VM
    /// (`CLOUDLET_VM_UID_FIRST`). The daemon owns the range: no account may use it.
    pub vm_uid_first: u32,
    /// Size of that range: the most VMs that run at once (`CLOUDLET_VM_UID_COUNT`).
    pub vm_uid_count: u32,
    /// Whether synthesis and overlay sessions stream the memory into the restore
    /// (`CLOUDLET_RESTORE_STREAM`: `auto`, `on` or `off`).
    pub restore_stream: StreamMode,
    /// Whether an overlay is encoded from the save as it is written
    /// (`CLOUDLET_SAVE_STREAM`: `auto`, `on` or `off`).
    pub save_stream: StreamMode,
    /// Longest QEMU may leave a streamed restore or save without progress (blocked FIFO,
    /// or a restore that does not finish after its stream) before the daemon destroys
    /// the VM (`CLOUDLET_STREAM_STALL_TIMEOUT_S`).
    pub stream_stall_timeout_s: u64,
    /// Whether the base of the last overlay session is kept restored and paused for the
    /// next one, which then starts with a resume (`CLOUDLET_OVERLAY_STANDBY`). Costs one
    /// paused VM: the base snapshot's non-zero pages, in host memory.
    pub overlay_standby: bool,
    /// Whether a restore of the base of the last synthesis (or of a new base, while no
    /// base has one) is kept started, its stream holding every base page, for the next
    /// synthesis on that base, which then writes
    /// only the overlay's pages (`CLOUDLET_SYNTHESIS_STANDBY`). Costs one QEMU: the base
    /// snapshot's non-zero pages, in host memory. Needs `restore_stream` auto or on.
    pub synthesis_standby: bool,
    /// Most guest RAM, in MiB, the synthesis standbys stand for together
    /// (`CLOUDLET_SYNTHESIS_STANDBY_MEMORY_MIB`): within it, each base synthesized lately
    /// keeps a standby. The base just used always gets one, the oldest others make room.
    /// 0: one standby, for the base used last.
    pub synthesis_standby_memory_mib: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8021)),
            data_dir: PathBuf::from("/var/lib/cloudlet"),
            libvirt_uri: "qemu:///system".into(),
            domain_type: DomainType::Kvm,
            log_format: LogFormat::Text,
            zstd_level: 3,
            threads: 0,
            import_dirs: Vec::new(),
            token_file: PathBuf::from("/etc/cloudlet/token"),
            max_upload_bytes: 64 << 30,
            max_import_bytes: 0,
            max_concurrent_syntheses: 2,
            request_timeout_s: 3600,
            body_idle_timeout_s: 60,
            idempotency_window_s: 86_400,
            header_timeout_s: 30,
            max_connections: 512,
            libvirt_timeout_s: 30,
            overlay_url_allow: Vec::new(),
            ports_address: None,
            tls: TlsMode::Auto,
            tls_cert: None,
            tls_key: None,
            confinement: ConfinementMode::Auto,
            vm_gid: 64000,
            vm_uid_first: 64001,
            vm_uid_count: 999,
            restore_stream: StreamMode::Auto,
            save_stream: StreamMode::Auto,
            stream_stall_timeout_s: 60,
            overlay_standby: false,
            synthesis_standby: false,
            synthesis_standby_memory_mib: 0,
        }
    }
}

impl Config {
    /// Loads `path` (a missing file is fine when it is the default path), then applies
    /// environment overrides, then validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.display().to_string(),
                source: Box::new(e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Config::default(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// The address forwarded guest ports listen on (see [`Config::ports_address`]; QEMU's
    /// user network forwards IPv4 only).
    pub fn effective_ports_address(&self) -> Ipv4Addr {
        match (self.ports_address, self.listen.ip()) {
            (Some(address), _) => address,
            (None, IpAddr::V4(address)) => address,
            (None, IpAddr::V6(address)) if address.is_unspecified() => Ipv4Addr::UNSPECIFIED,
            (None, IpAddr::V6(_)) => Ipv4Addr::LOCALHOST,
        }
    }

    /// Applies `CLOUDLET_*` overrides read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(key: &'static str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e: T::Err| ConfigError::Invalid {
                key,
                reason: e.to_string(),
            })
        }
        if let Some(v) = get("CLOUDLET_LISTEN") {
            self.listen = parse("listen", &v)?;
        }
        if let Some(v) = get("CLOUDLET_PORTS_ADDRESS") {
            self.ports_address = Some(parse("ports_address", &v)?);
        }
        if let Some(v) = get("CLOUDLET_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("CLOUDLET_LIBVIRT_URI") {
            self.libvirt_uri = v;
        }
        if let Some(v) = get("CLOUDLET_DOMAIN_TYPE") {
            self.domain_type = match v.as_str() {
                "kvm" => DomainType::Kvm,
                "qemu" => DomainType::Qemu,
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "domain_type",
                        reason: format!("`{v}` is neither `kvm` nor `qemu`"),
                    })
                }
            };
        }
        if let Some(v) = get("CLOUDLET_LOG_FORMAT") {
            self.log_format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "log_format",
                        reason: format!("`{v}` is neither `text` nor `json`"),
                    })
                }
            };
        }
        if let Some(v) = get("CLOUDLET_ZSTD_LEVEL") {
            self.zstd_level = parse("zstd_level", &v)?;
        }
        if let Some(v) = get("CLOUDLET_THREADS") {
            self.threads = parse("threads", &v)?;
        }
        if let Some(v) = get("CLOUDLET_IMPORT_DIRS") {
            self.import_dirs = v
                .split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        if let Some(v) = get("CLOUDLET_TOKEN_FILE") {
            self.token_file = PathBuf::from(v);
        }
        if let Some(v) = get("CLOUDLET_MAX_UPLOAD_BYTES") {
            self.max_upload_bytes = parse("max_upload_bytes", &v)?;
        }
        if let Some(v) = get("CLOUDLET_MAX_IMPORT_BYTES") {
            self.max_import_bytes = parse("max_import_bytes", &v)?;
        }
        if let Some(v) = get("CLOUDLET_MAX_CONCURRENT_SYNTHESES") {
            self.max_concurrent_syntheses = parse("max_concurrent_syntheses", &v)?;
        }
        if let Some(v) = get("CLOUDLET_REQUEST_TIMEOUT_S") {
            self.request_timeout_s = parse("request_timeout_s", &v)?;
        }
        if let Some(v) = get("CLOUDLET_BODY_IDLE_TIMEOUT_S") {
            self.body_idle_timeout_s = parse("body_idle_timeout_s", &v)?;
        }
        if let Some(v) = get("CLOUDLET_IDEMPOTENCY_WINDOW_S") {
            self.idempotency_window_s = parse("idempotency_window_s", &v)?;
        }
        if let Some(v) = get("CLOUDLET_HEADER_TIMEOUT_S") {
            self.header_timeout_s = parse("header_timeout_s", &v)?;
        }
        if let Some(v) = get("CLOUDLET_MAX_CONNECTIONS") {
            self.max_connections = parse("max_connections", &v)?;
        }
        if let Some(v) = get("CLOUDLET_LIBVIRT_TIMEOUT_S") {
            self.libvirt_timeout_s = parse("libvirt_timeout_s", &v)?;
        }
        if let Some(v) = get("CLOUDLET_TLS") {
            self.tls = match v.as_str() {
                "auto" => TlsMode::Auto,
                "on" => TlsMode::On,
                "off" => TlsMode::Off,
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "tls",
                        reason: format!("`{v}` is not `auto`, `on` or `off`"),
                    })
                }
            };
        }
        if let Some(v) = get("CLOUDLET_TLS_CERT") {
            self.tls_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = get("CLOUDLET_TLS_KEY") {
            self.tls_key = Some(PathBuf::from(v));
        }
        if let Some(v) = get("CLOUDLET_CONFINEMENT") {
            self.confinement = parse("confinement", &v)?;
        }
        if let Some(v) = get("CLOUDLET_RESTORE_STREAM") {
            self.restore_stream = parse("restore_stream", &v)?;
        }
        if let Some(v) = get("CLOUDLET_SAVE_STREAM") {
            self.save_stream = parse("save_stream", &v)?;
        }
        if let Some(v) = get("CLOUDLET_OVERLAY_STANDBY") {
            self.overlay_standby = parse("overlay_standby", &v)?;
        }
        if let Some(v) = get("CLOUDLET_SYNTHESIS_STANDBY") {
            self.synthesis_standby = parse("synthesis_standby", &v)?;
        }
        if let Some(v) = get("CLOUDLET_SYNTHESIS_STANDBY_MEMORY_MIB") {
            self.synthesis_standby_memory_mib = parse("synthesis_standby_memory_mib", &v)?;
        }
        if let Some(v) = get("CLOUDLET_STREAM_STALL_TIMEOUT_S") {
            self.stream_stall_timeout_s = parse("stream_stall_timeout_s", &v)?;
        }
        if let Some(v) = get("CLOUDLET_VM_GID") {
            self.vm_gid = parse("vm_gid", &v)?;
        }
        if let Some(v) = get("CLOUDLET_VM_UID_FIRST") {
            self.vm_uid_first = parse("vm_uid_first", &v)?;
        }
        if let Some(v) = get("CLOUDLET_VM_UID_COUNT") {
            self.vm_uid_count = parse("vm_uid_count", &v)?;
        }
        if let Some(v) = get("CLOUDLET_OVERLAY_URL_ALLOW") {
            self.overlay_url_allow = v
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(String::from)
                .collect();
        }
        Ok(())
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.synthesis_standby && self.restore_stream == StreamMode::Off {
            return Err(ConfigError::Invalid {
                key: "synthesis_standby",
                reason: "the standby is a streamed restore: set restore_stream to auto or on"
                    .into(),
            });
        }
        if !self.data_dir.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "data_dir",
                reason: "must be an absolute path".into(),
            });
        }
        if !(1..=19).contains(&self.zstd_level) {
            return Err(ConfigError::Invalid {
                key: "zstd_level",
                reason: "must be 1..=19".into(),
            });
        }
        if let Some(d) = self.import_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(ConfigError::Invalid {
                key: "import_dirs",
                reason: format!("{} is not an absolute path", d.display()),
            });
        }
        if !self.token_file.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "token_file",
                reason: "must be an absolute path".into(),
            });
        }
        if self.max_concurrent_syntheses == 0 {
            return Err(ConfigError::Invalid {
                key: "max_concurrent_syntheses",
                reason: "must be at least 1".into(),
            });
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "max_connections",
                reason: "must be at least 1".into(),
            });
        }
        for (key, value) in [
            ("header_timeout_s", self.header_timeout_s),
            ("libvirt_timeout_s", self.libvirt_timeout_s),
            ("stream_stall_timeout_s", self.stream_stall_timeout_s),
            ("request_timeout_s", self.request_timeout_s),
            ("body_idle_timeout_s", self.body_idle_timeout_s),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "timeouts must be at least 1 s".into(),
                });
            }
        }
        if let Some(o) = self
            .overlay_url_allow
            .iter()
            .find(|o| parse_origin(o).is_none())
        {
            return Err(ConfigError::Invalid {
                key: "overlay_url_allow",
                reason: format!("`{o}` is not an http(s)://host[:port] origin"),
            });
        }
        self.validate_tls()?;
        if self.vm_gid == 0 || self.vm_gid == u32::MAX {
            return Err(ConfigError::Invalid {
                key: "vm_gid",
                reason: "must not be root's group (0) or -1".into(),
            });
        }
        // u32::MAX is "no id" to chown(2); the range must stop below it.
        let end = u64::from(self.vm_uid_first) + u64::from(self.vm_uid_count);
        if self.vm_uid_first == 0 || self.vm_uid_count == 0 || end > u64::from(u32::MAX) {
            return Err(ConfigError::Invalid {
                key: "vm_uid_first",
                reason: format!(
                    "the VM uid range {}+{} must be non-empty, exclude root (0) and end \
                     below 4294967295",
                    self.vm_uid_first, self.vm_uid_count
                ),
            });
        }
        if self.libvirt_uri.is_empty() {
            return Err(ConfigError::Invalid {
                key: "libvirt_uri",
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }

    /// `tls_cert` and `tls_key` come together, as absolute paths, and not with `tls = "off"`.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        for (key, path) in [("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key)] {
            if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be an absolute path".into(),
                });
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => Err(ConfigError::Invalid {
                key: "tls_key",
                reason: "tls_cert is set: set tls_key to its private key too".into(),
            }),
            (None, Some(_)) => Err(ConfigError::Invalid {
                key: "tls_cert",
                reason: "tls_key is set: set tls_cert to its certificate too".into(),
            }),
            (Some(_), Some(_)) if self.tls == TlsMode::Off => Err(ConfigError::Invalid {
                key: "tls",
                reason: "`off` contradicts tls_cert / tls_key: remove one or the other".into(),
            }),
            _ => Ok(()),
        }
    }

    /// The effective configuration as TOML (for `cloudletd print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// Every setting, its environment override and default (`cloudletd --help`).
pub const SETTINGS_HELP: &str = "\
Settings: defaults < TOML config file < environment (CLOUDLET_<KEY>):
  listen                    CLOUDLET_LISTEN                    127.0.0.1:8021
      API address. Off loopback the API is served over TLS (see tls).
  data_dir                  CLOUDLET_DATA_DIR                  /var/lib/cloudlet
      Catalogue (SQLite) and image files; the daemon owns everything in it.
  libvirt_uri               CLOUDLET_LIBVIRT_URI               qemu:///system
  domain_type               CLOUDLET_DOMAIN_TYPE               kvm
      kvm (needs /dev/kvm) or qemu (TCG emulation).
  log_format                CLOUDLET_LOG_FORMAT                text  (or json: one object per line)
      Levels: CLOUDLET_LOG (e.g. info, debug, info,cloudletd::access=warn).
  zstd_level                CLOUDLET_ZSTD_LEVEL                3     (1..=19)
  threads                   CLOUDLET_THREADS                   0     (0: one per core)
  import_dirs               CLOUDLET_IMPORT_DIRS (a:b:c)       []
      Directories requests may name local files in; anything else must be uploaded.
  token_file                CLOUDLET_TOKEN_FILE                /etc/cloudlet/token
      API bearer token, created (mode 0600) on first start; the CLI reads it there.
  max_upload_bytes          CLOUDLET_MAX_UPLOAD_BYTES          68719476736 (64 GiB)
  max_import_bytes          CLOUDLET_MAX_IMPORT_BYTES          0     (0: the data disk's free space)
      Most bytes an imported base archive may expand to (declared file sizes); zero
      blocks are stored as holes, the rest must fit in the data disk's free space.
  max_concurrent_syntheses  CLOUDLET_MAX_CONCURRENT_SYNTHESES  2     (more: 503 + Retry-After)
  request_timeout_s         CLOUDLET_REQUEST_TIMEOUT_S         3600
  body_idle_timeout_s       CLOUDLET_BODY_IDLE_TIMEOUT_S       60    (a stalled upload is dropped)
  idempotency_window_s      CLOUDLET_IDEMPOTENCY_WINDOW_S      86400 (an Idempotency-Key's lifetime)
  header_timeout_s          CLOUDLET_HEADER_TIMEOUT_S          30    (slow or idle connections closed)
  max_connections           CLOUDLET_MAX_CONNECTIONS           512   (more: 503, closed)
  libvirt_timeout_s         CLOUDLET_LIBVIRT_TIMEOUT_S         30    (per libvirt call at start)
  overlay_url_allow         CLOUDLET_OVERLAY_URL_ALLOW (a,b)   []
      Origins (http(s)://host[:port]) synthesis may fetch overlays from.
  ports_address             CLOUDLET_PORTS_ADDRESS             (listen's address)
      IPv4 address the VMs' forwarded guest ports listen on, e.g. 0.0.0.0 for devices
      on the network to reach the apps.
  tls                       CLOUDLET_TLS                       auto  (auto, on, off)
      auto: TLS unless listen is loopback and no tls_cert is set; on: always;
      off: plain HTTP even off loopback (the token crosses the network in clear:
      warned at start, /health says insecure).
  tls_cert                  CLOUDLET_TLS_CERT                  (none)
  tls_key                   CLOUDLET_TLS_KEY                   (none)
      PEM certificate chain and its key. Unset with TLS on: a self-signed
      certificate is made on first start next to token_file (tls-cert.pem,
      tls-key.pem 0600) and reused; `cloudletd tls-fingerprint` prints its SHA-256.
  confinement               CLOUDLET_CONFINEMENT               auto  (auto | required | off)
      Each VM's QEMU runs as a uid of its own (libvirt DAC seclabel); auto warns and
      runs VMs as libvirt's qemu.conf user where the host cannot, required refuses to start.
  vm_gid                    CLOUDLET_VM_GID                    64000 (may read base files)
  vm_uid_first              CLOUDLET_VM_UID_FIRST              64001
  vm_uid_count              CLOUDLET_VM_UID_COUNT              999   (VMs at once)
      The daemon owns these uids: no account may use them.
  restore_stream            CLOUDLET_RESTORE_STREAM            auto  (auto | on | off)
      Synthesis streams the rebuilt memory into QEMU's restore through a FIFO as it is
      decoded (no RAM-sized save file); overlay sessions resume the base the same way;
      auto falls back to a save file when libvirt refuses the FIFO, off always writes it.
  save_stream               CLOUDLET_SAVE_STREAM               auto  (auto | on | off)
      Overlay creation encodes the customized VM's memory while libvirt saves it into a
      FIFO (no save file); auto falls back to a save file when the save into the FIFO
      fails with the VM still running.
  stream_stall_timeout_s    CLOUDLET_STREAM_STALL_TIMEOUT_S    60
      A QEMU that leaves a streamed restore or save without progress this long (or
      does not finish a restore this long after its stream) is destroyed: the request
      fails with hypervisor-error instead of hanging.
  overlay_standby           CLOUDLET_OVERLAY_STANDBY           false (true | false)
      Keeps the base of the last overlay session restored and paused, its session
      files ready: the next overlay session on that base starts with a resume instead
      of a restore. Costs one paused VM (the base snapshot's pages) in host memory.
  synthesis_standby         CLOUDLET_SYNTHESIS_STANDBY         false (true | false)
      Keeps a restore of the base of the last synthesis started, every base page
      already streamed into it: the next synthesis on that base sends only the
      overlay's pages. Costs one QEMU (the base snapshot's pages) in host memory.
      Needs restore_stream auto or on.
  synthesis_standby_memory_mib CLOUDLET_SYNTHESIS_STANDBY_MEMORY_MIB 0
      With synthesis_standby: the most guest RAM the standbys stand for together.
      Within it, every base synthesized lately keeps a standby (the base just used
      always gets one; the oldest others make room). 0: one standby, the last base's.
Log filter: CLOUDLET_LOG (default \"info\", e.g. \"cloudletd=debug\").
`cloudletd print-config` shows the effective settings as TOML.";

/// `scheme://host[:port]` → (scheme, host, port), lowercase; None unless http or https
/// with a host and nothing after it.
pub fn parse_origin(origin: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '@', '?', '#']) {
        return None;
    }
    // `[v6]`, `[v6]:port`, `host`, `host:port`
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6.split_once(']')?;
        let port = match after {
            "" => default_port,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (addr, port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (rest, default_port),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme, host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_then_validation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/cloudlet\"\ndomain_type = \"qemu\"\n",
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut c: Config = toml::from_str(&text).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/cloudlet"));
        assert_eq!(c.domain_type, DomainType::Qemu);
        assert_eq!(c.listen, Config::default().listen);
        c.apply_env(|k| (k == "CLOUDLET_LISTEN").then(|| "127.0.0.1:9999".to_string()))
            .unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert!(c.validate().is_ok());
        let round: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(round, c);
    }

    #[test]
    fn forwarded_ports_follow_the_api_address_unless_set() {
        let on = |listen: &str| Config {
            listen: listen.parse().unwrap(),
            ..Config::default()
        };
        assert_eq!(
            on("127.0.0.1:8021").effective_ports_address(),
            Ipv4Addr::LOCALHOST
        );
        assert_eq!(
            on("192.168.1.5:8021").effective_ports_address(),
            Ipv4Addr::new(192, 168, 1, 5)
        );
        assert_eq!(
            on("[::]:8021").effective_ports_address(),
            Ipv4Addr::UNSPECIFIED
        );
        assert_eq!(
            on("[::1]:8021").effective_ports_address(),
            Ipv4Addr::LOCALHOST
        );
        let mut c = on("127.0.0.1:8021");
        c.apply_env(|k| (k == "CLOUDLET_PORTS_ADDRESS").then(|| "0.0.0.0".into()))
            .unwrap();
        assert_eq!(c.effective_ports_address(), Ipv4Addr::UNSPECIFIED);
        let round: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(round, c);
        let err = c
            .apply_env(|k| (k == "CLOUDLET_PORTS_ADDRESS").then(|| "::1".into()))
            .unwrap_err();
        assert!(err.to_string().contains("ports_address"), "{err}");
    }

    #[test]
    fn bad_settings_name_their_key() {
        assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
        let mut c = Config::default();
        let err = c
            .apply_env(|k| (k == "CLOUDLET_DOMAIN_TYPE").then(|| "xen".into()))
            .unwrap_err();
        assert!(err.to_string().contains("domain_type"), "{err}");
        c.data_dir = PathBuf::from("relative");
        assert!(c.validate().unwrap_err().to_string().contains("data_dir"));
        let c = Config {
            zstd_level: 40,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("zstd_level"));
        assert!(Config::load(Some(Path::new("/nonexistent/c.toml"))).is_err());
        let c = Config {
            overlay_url_allow: vec!["ftp://x".into()],
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("overlay_url_allow"));
        let err = Config::default()
            .apply_env(|k| (k == "CLOUDLET_CONFINEMENT").then(|| "maybe".into()))
            .unwrap_err();
        assert!(err.to_string().contains("confinement"), "{err}");
        for (bad, key) in [
            (
                Config {
                    vm_gid: 0,
                    ..Config::default()
                },
                "vm_gid",
            ),
            (
                Config {
                    vm_uid_first: 0,
                    ..Config::default()
                },
                "vm_uid_first",
            ),
            (
                Config {
                    vm_uid_count: 0,
                    ..Config::default()
                },
                "vm_uid_first",
            ),
            (
                Config {
                    vm_uid_first: u32::MAX - 10,
                    vm_uid_count: 11,
                    ..Config::default()
                },
                "vm_uid_first",
            ),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        let mut c = Config::default();
        c.apply_env(|k| (k == "CLOUDLET_CONFINEMENT").then(|| "required".into()))
            .unwrap();
        assert_eq!(c.confinement, ConfinementMode::Required);
        c.validate().unwrap();
    }

    #[test]
    fn tls_settings_come_in_pairs() {
        let mut c = Config::default();
        c.apply_env(|k| (k == "CLOUDLET_TLS_CERT").then(|| "/etc/c.pem".into()))
            .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("tls_key"), "{err}");
        c.apply_env(|k| (k == "CLOUDLET_TLS_KEY").then(|| "/etc/k.pem".into()))
            .unwrap();
        assert!(c.validate().is_ok());
        c.apply_env(|k| (k == "CLOUDLET_TLS").then(|| "off".into()))
            .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("`tls`"), "{err}");
        let err = c
            .apply_env(|k| (k == "CLOUDLET_TLS").then(|| "yes".into()))
            .unwrap_err();
        assert!(err.to_string().contains("`tls`"), "{err}");
        let c = Config {
            tls_cert: Some("rel.pem".into()),
            tls_key: Some("/k.pem".into()),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("tls_cert"));
        let round: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(round, c);
    }

    #[test]
    fn help_names_every_setting() {
        let keys = Config::default().to_toml();
        for line in keys.lines().filter(|l| l.contains(" = ")) {
            let key = line.split(" = ").next().unwrap().trim();
            assert!(
                SETTINGS_HELP.contains(&format!("  {key} ")),
                "{key} missing from --help"
            );
            let env = format!("CLOUDLET_{}", key.to_uppercase());
            assert!(SETTINGS_HELP.contains(&env), "{env} missing from --help");
        }
    }

    #[test]
    fn origins() {
        assert_eq!(
            parse_origin("HTTPS://Overlays.example.org/"),
            Some(("https".into(), "overlays.example.org".into(), 443))
        );
        assert_eq!(
            parse_origin("http://10.0.0.5:8000"),
            Some(("http".into(), "10.0.0.5".into(), 8000))
        );
        assert_eq!(
            parse_origin("http://[::1]"),
            Some(("http".into(), "::1".into(), 80))
        );
        assert_eq!(
            parse_origin("https://[::1]:8443"),
            Some(("https".into(), "::1".into(), 8443))
        );
        for bad in [
            "http://[::1",
            "http://[::1]x",
            "file:///etc",
            "http://",
            "http://h/path",
            "http://u@h",
            "h:80",
            "http://h:x",
        ] {
            assert_eq!(parse_origin(bad), None, "{bad}");
        }
    }
}
