//! Daemon configuration: defaults < TOML file < `CLOUDLET_*` environment variables.
//! Validated once at load; every error names the setting.

use std::net::SocketAddr;
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
/// zstd_level = 3
/// threads = 0
/// import_dirs = ["/srv/images"]
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

/// libvirt domain type for the VMs the daemon runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    /// Hardware virtualization (`/dev/kvm`).
    Kvm,
    /// Software emulation (TCG): slower, but works where nested KVM does not.
    Qemu,
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
    /// zstd level of overlay payloads, 1..=19 (`CLOUDLET_ZSTD_LEVEL`).
    pub zstd_level: i32,
    /// Worker threads for encoding and decoding, 0 = one per core (`CLOUDLET_THREADS`).
    pub threads: usize,
    /// Directories a request may name local files in (disk images, kernels, save files,
    /// overlays); nothing outside them is read on a request's behalf
    /// (`CLOUDLET_IMPORT_DIRS`, colon-separated). Empty: no local imports.
    pub import_dirs: Vec<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8021)),
            data_dir: PathBuf::from("/var/lib/cloudlet"),
            libvirt_uri: "qemu:///system".into(),
            domain_type: DomainType::Kvm,
            zstd_level: 3,
            threads: 0,
            import_dirs: Vec::new(),
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
        Ok(())
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
        if self.libvirt_uri.is_empty() {
            return Err(ConfigError::Invalid {
                key: "libvirt_uri",
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }

    /// The effective configuration as TOML (for `cloudletd print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
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
    }
}
