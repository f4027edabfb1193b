//! Transport security of the API (docs/api.md, "Transport security"): whether the daemon
//! serves TLS, with which certificate, and the rustls acceptor the accept loop puts under
//! each connection. With TLS on and no `tls_cert` configured, a self-signed certificate is
//! made on first start next to the token file and reused after; devices pin its SHA-256
//! (`cloudletd tls-fingerprint`), so no CA is needed on an edge network.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cloudlet_api::TlsState;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, TlsMode};

/// File name of the self-signed certificate, in the token file's directory.
pub const SELF_SIGNED_CERT: &str = "tls-cert.pem";
/// File name of its private key (mode 0600), beside it.
pub const SELF_SIGNED_KEY: &str = "tls-key.pem";

/// Why TLS cannot be set up; every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing, unreadable or holds no PEM certificate.
    #[error("TLS certificate file {}: {reason}", path.display())]
    Cert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file is missing, unreadable or holds no PEM private key.
    #[error("TLS key file {}: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refuses the pair (a key it cannot use, or not the certificate's key).
    #[error("TLS certificate {} with key {}: not a usable pair", cert.display(), key.display())]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// rcgen could not make the self-signed certificate.
    #[error("generating a self-signed TLS certificate")]
    Generate(#[from] rcgen::Error),
    /// The self-signed certificate or key could not be written.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How the daemon carries the API.
#[derive(Clone)]
pub enum Transport {
    /// Plain HTTP; `insecure` when not on loopback (`tls = "off"`).
    Plain {
        /// Off loopback: the token crosses the network in clear text.
        insecure: bool,
    },
    /// TLS with this certificate.
    Tls(ServerTls),
}

/// The daemon's TLS side.
#[derive(Clone)]
pub struct ServerTls {
    /// Handshakes of accepted connections.
    pub acceptor: TlsAcceptor,
    /// SHA-256 of the leaf certificate ([`fingerprint`]).
    pub fingerprint: String,
    /// The certificate file.
    pub cert: PathBuf,
    /// Made by the daemon (no `tls_cert` configured).
    pub self_signed: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Plain { insecure } => write!(f, "Plain {{ insecure: {insecure} }}"),
            Transport::Tls(t) => write!(
                f,
                "Tls {{ cert: {}, sha256: {} }}",
                t.cert.display(),
                t.fingerprint
            ),
        }
    }
}

impl Transport {
    /// The acceptor, when TLS is on.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        match self {
            Transport::Plain { .. } => None,
            Transport::Tls(t) => Some(t.acceptor.clone()),
        }
    }

    /// What `/health` says about it.
    pub fn state(&self) -> TlsState {
        match self {
            Transport::Plain { insecure } => TlsState {
                insecure: *insecure,
                ..TlsState::default()
            },
            Transport::Tls(t) => TlsState {
                enabled: true,
                fingerprint_sha256: Some(t.fingerprint.clone()),
                self_signed: t.self_signed,
                insecure: false,
            },
        }
    }
}

/// The certificate and key files TLS uses under `config` (and whether they are the
/// self-signed pair); `None` for plain HTTP.
pub fn cert_files(config: &Config) -> Option<(PathBuf, PathBuf, bool)> {
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        return Some((cert.clone(), key.clone(), false));
    }
    let tls = match config.tls {
        TlsMode::Off => false,
        TlsMode::On => true,
        TlsMode::Auto => !config.listen.ip().is_loopback(),
    };
    tls.then(|| {
        let (cert, key) = self_signed_files(config);
        (cert, key, true)
    })
}

/// Where the self-signed pair lives: the token file's directory.
pub fn self_signed_files(config: &Config) -> (PathBuf, PathBuf) {
    let dir = config.token_file.parent().unwrap_or(Path::new("/"));
    (dir.join(SELF_SIGNED_CERT), dir.join(SELF_SIGNED_KEY))
}

/// Sets up the transport `config` asks for, making the self-signed certificate if it is
/// needed and missing.
pub fn setup(config: &Config) -> Result<Transport, TlsError> {
    let Some((cert, key, self_signed)) = cert_files(config) else {
        return Ok(Transport::Plain {
            insecure: !config.listen.ip().is_loopback(),
        });
    };
    if self_signed && !(cert.exists() && key.exists()) {
        generate(config, &cert, &key)?;
    }
    let chain = read_certs(&cert)?;
    let fingerprint = fingerprint(chain.first().map_or(&[][..], |c| c.as_ref()));
    let private = PrivateKeyDer::from_pem_file(&key).map_err(|e| TlsError::Key {
        path: key.clone(),
        reason: pem_reason(&e, "PRIVATE KEY"),
    })?;
    let pair = |source| TlsError::Pair {
        cert: cert.clone(),
        key: key.clone(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(pair)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(pair)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Transport::Tls(ServerTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        fingerprint,
        cert,
        self_signed,
    }))
}

/// The SHA-256 of the certificate TLS uses under `config` (`cloudletd tls-fingerprint`),
/// from its file; the self-signed one's even when `config` serves plain HTTP, so an
/// admin can read it before switching.
pub fn configured_fingerprint(config: &Config) -> Result<String, TlsError> {
    let cert = cert_files(config).map_or_else(|| self_signed_files(config).0, |(c, ..)| c);
    let chain = read_certs(&cert)?;
    Ok(fingerprint(chain.first().map_or(&[][..], |c| c.as_ref())))
}

/// SHA-256 of a DER certificate: uppercase hex pairs joined by `:` (as `openssl x509
/// -fingerprint -sha256` prints it).
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The PEM certificates of `path`, leaf first; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Cert {
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(pem_reason(&e, "CERTIFICATE")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(pem_reason(&e, "CERTIFICATE")))?;
    if chain.is_empty() {
        return Err(bad("holds no PEM CERTIFICATE block".into()));
    }
    Ok(chain)
}

/// One line for a PEM read error.
fn pem_reason(e: &rustls::pki_types::pem::Error, what: &str) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => format!("holds no PEM {what} block"),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// Makes the self-signed certificate: SANs the host name, `localhost`, and the listen
/// address, or every local address when listening on all of them. Key first (mode 0600),
/// each file written whole under a temporary name, then renamed.
fn generate(config: &Config, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let names = subject_names(config);
    let made = rcgen::generate_simple_self_signed(names.clone())?;
    write_new(key, made.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert, made.cert.pem().as_bytes(), 0o644)?;
    tracing::info!(cert = %cert.display(), key = %key.display(), ?names,
        "created a self-signed TLS certificate");
    Ok(())
}

/// The names and addresses the self-signed certificate is valid for.
fn subject_names(config: &Config) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(host) = rustix::system::uname().nodename().to_str() {
        // rcgen takes any ASCII; a name a DNS SAN cannot hold is left out.
        if !host.is_empty() && host.is_ascii() && host != "localhost" {
            names.push(host.to_string());
        }
    }
    names.push("localhost".into());
    let ip = config.listen.ip();
    if ip.is_unspecified() {
        for iface in if_addrs::get_if_addrs().unwrap_or_default() {
            names.push(iface.ip().to_string());
        }
    } else {
        names.push(ip.to_string());
    }
    names.dedup();
    names
}

/// Writes `bytes` to `path` with `mode` via a temporary file and a rename.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let failed = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .recursive(true)
            .create(dir)
            .map_err(failed)?;
    }
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&tmp, path).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in(dir: &Path, listen: &str) -> Config {
        Config {
            listen: listen.parse().unwrap(),
            token_file: dir.join("token"),
            ..Config::default()
        }
    }

    #[test]
    fn loopback_is_plain_elsewhere_a_certificate_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let loopback = config_in(dir.path(), "127.0.0.1:8021");
        assert!(matches!(
            setup(&loopback).unwrap(),
            Transport::Plain { insecure: false }
        ));
        let network = config_in(dir.path(), "192.0.2.7:8021");
        let Transport::Tls(first) = setup(&network).unwrap() else {
            panic!("a non-loopback listen must get TLS");
        };
        assert!(first.self_signed);
        let key = dir.path().join(SELF_SIGNED_KEY);
        let mode = std::os::unix::fs::PermissionsExt::mode(&key.metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let Transport::Tls(again) = setup(&network).unwrap() else {
            panic!("TLS again");
        };
        assert_eq!(first.fingerprint, again.fingerprint, "reused, not remade");
        assert_eq!(configured_fingerprint(&network).unwrap(), first.fingerprint);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        let off = Config {
            tls: TlsMode::Off,
            ..network
        };
        assert!(matches!(
            setup(&off).unwrap(),
            Transport::Plain { insecure: true }
        ));
        assert!(setup(&off).unwrap().state().insecure);
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        std::fs::write(&key, "").unwrap();
        let config = Config {
            tls_cert: Some(cert.clone()),
            tls_key: Some(key.clone()),
            ..config_in(dir.path(), "127.0.0.1:8021")
        };
        let err = setup(&config).unwrap_err().to_string();
        assert!(
            err.contains("c.pem") && err.contains("no PEM CERTIFICATE"),
            "{err}"
        );
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&cert, made.cert.pem()).unwrap();
        let err = setup(&config).unwrap_err().to_string();
        assert!(
            err.contains("k.pem") && err.contains("PRIVATE KEY"),
            "{err}"
        );
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&key, other.serialize_pem()).unwrap();
        let err = setup(&config).unwrap_err().to_string();
        assert!(err.contains("c.pem") && err.contains("k.pem"), "{err}");
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        assert!(!setup(&config).unwrap().state().self_signed);
        std::fs::remove_file(&cert).unwrap();
        let err = setup(&config).unwrap_err().to_string();
        assert!(
            err.contains("c.pem") && err.contains("No such file"),
            "{err}"
        );
    }

    #[test]
    fn all_addresses_name_every_local_one() {
        let dir = tempfile::tempdir().unwrap();
        let names = subject_names(&config_in(dir.path(), "0.0.0.0:8021"));
        assert!(names.contains(&"localhost".to_string()), "{names:?}");
        assert!(names.contains(&"127.0.0.1".to_string()), "{names:?}");
        let names = subject_names(&config_in(dir.path(), "192.0.2.7:8021"));
        assert!(names.contains(&"192.0.2.7".to_string()), "{names:?}");
        assert!(!names.contains(&"127.0.0.1".to_string()), "{names:?}");
    }
}
