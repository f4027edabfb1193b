//! Which daemon the CLI trusts over https (docs/cli.md, "Talking to a cloudlet over the
//! network"), and its refusal to send the token over plain HTTP off loopback.
//!
//! One rustls verifier serves both trust modes: `--pin-sha256` accepts exactly the
//! certificate with that SHA-256 (the handshake signatures are still verified with its
//! key), otherwise the certificate must chain to a public CA or to `--ca-cert`. Either
//! way the verifier remembers what the daemon presented, so that a refusal can print the
//! fingerprint to compare with `cloudletd tls-fingerprint` (trust on first use, by hand).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// A refusal to trust the daemon or to talk to it insecurely. Shown as `message (code)`;
/// `code` is the `--json` error code.
#[derive(Debug, Clone)]
pub struct TrustError {
    /// `insecure-url`, `trust-without-tls`, `tls-unknown-certificate`, `tls-pin-mismatch`, `bad-pin` or
    /// `bad-ca-cert`.
    pub code: &'static str,
    /// What happened and what to do.
    pub message: String,
}

impl std::fmt::Display for TrustError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for TrustError {}

/// Refuses `http://` to anything but loopback unless `allow_insecure`: checked before any
/// connection, so the token never leaves the machine in clear text. `trust` names the
/// certificate option given (`--pin-sha256`, `--ca-cert`), if any: over plain HTTP
/// there is no certificate, and a check the user asked for is not silently skipped.
pub fn check_url(url: &str, allow_insecure: bool, trust: Option<&str>) -> Result<(), TrustError> {
    let plain = url
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"));
    if let Some(option) = trust.filter(|_| plain) {
        return Err(TrustError {
            code: "trust-without-tls",
            message: format!(
                "{option} checks the daemon's certificate, but {url} is plain http:// and \
                 has none: use https://, or drop {option} (and its CLOUDLET_ variable)"
            ),
        });
    }
    if !plain || allow_insecure || crate::localfile::is_loopback_url(url) {
        return Ok(());
    }
    Err(TrustError {
        code: "insecure-url",
        message: format!(
            "refusing to send the API token in clear text to {url}: plain http:// is only \
             used with a loopback address; use https:// (the daemon serves TLS off \
             loopback), or --allow-insecure (CLOUDLET_ALLOW_INSECURE=1) on a link you trust"
        ),
    })
}

/// SHA-256 pin given as hex (colons and case free) → the 32 bytes.
pub fn parse_pin(text: &str) -> Result<Vec<u8>, TrustError> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = (hex.len() == 64 && hex.is_ascii())
        .then(|| {
            (0..64)
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()
        })
        .flatten();
    bytes.ok_or_else(|| TrustError {
        code: "bad-pin",
        message: format!(
            "--pin-sha256 `{text}` is not a SHA-256 fingerprint (64 hex digits, colons \
             optional), as `cloudletd tls-fingerprint` prints it"
        ),
    })
}

/// SHA-256 of a DER certificate as the daemon prints it: `AB:CD:...`.
pub fn fingerprint(der: &[u8]) -> String {
    fingerprint_of_digest(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// Why the last handshake's certificate was refused.
#[derive(Debug, Clone)]
enum Refusal {
    /// Not signed by a trusted CA (or not for this name): rustls' reason.
    Unknown { presented: String, reason: String },
    /// Not the pinned certificate.
    Mismatch { presented: String, pinned: String },
}

/// The TLS setup of one client: the rustls config for reqwest and what its verifier saw.
pub struct ClientTls {
    /// For `reqwest`'s `use_preconfigured_tls`.
    pub config: rustls::ClientConfig,
    refused: Arc<Mutex<Option<Refusal>>>,
}

impl ClientTls {
    /// Trusts the pinned certificate if `pin` is given, else public CAs and `ca_cert`.
    pub fn new(ca_cert: Option<&Path>, pin: Option<&str>) -> Result<Self, TrustError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca_cert {
            for cert in read_ca(path)? {
                roots.add(cert).map_err(|e| bad_ca(path, &e.to_string()))?;
            }
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TrustError {
                code: "bad-ca-cert",
                message: format!("cannot build the certificate verifier: {e}"),
            })?;
        let refused = Arc::new(Mutex::new(None));
        let verifier = Verifier {
            pin: pin.map(parse_pin).transpose()?,
            webpki,
            provider: provider.clone(),
            refused: refused.clone(),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TrustError {
                code: "bad-ca-cert",
                message: format!("TLS setup: {e}"),
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Self { config, refused })
    }

    /// A handle on what the verifier refuses, for [`Refused::explain`].
    pub fn refused(&self) -> Refused {
        Refused(self.refused.clone())
    }
}

/// What the verifier of a client refused last (shared with it).
#[derive(Clone, Default)]
pub struct Refused(Arc<Mutex<Option<Refusal>>>);

impl Refused {
    /// The trust error behind a failed request to `url`, if the certificate was refused.
    pub fn explain(&self, url: &str) -> Option<TrustError> {
        let refusal = self.0.lock().ok()?.clone()?;
        Some(match refusal {
            Refusal::Unknown { presented, reason } => TrustError {
                code: "tls-unknown-certificate",
                message: format!(
                    "the daemon at {url} presented a certificate this machine does not \
                     trust ({reason}); its SHA-256 fingerprint is {presented}. Compare it \
                     with what `cloudletd tls-fingerprint` prints on the cloudlet (read it \
                     there or get it from its admin, not over this network); if they are \
                     the same, rerun with --pin-sha256 {presented} (or set \
                     CLOUDLET_PIN_SHA256), or pass the cloudlet's certificate with --ca-cert"
                ),
            },
            Refusal::Mismatch { presented, pinned } => TrustError {
                code: "tls-pin-mismatch",
                message: format!(
                    "WARNING: CERTIFICATE MISMATCH. The daemon at {url} presented a \
                     certificate with SHA-256 {presented}, not the pinned {pinned}. Someone \
                     may be intercepting this connection, or the cloudlet's certificate was \
                     replaced; nothing was sent. Do not continue until the cloudlet's admin \
                     confirms the new fingerprint (`cloudletd tls-fingerprint`)"
                ),
            },
        })
    }
}

/// The PEM certificates of a `--ca-cert` file; at least one.
fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad_ca(path, &pem_reason(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_ca(path, &pem_reason(&e)))?;
    if certs.is_empty() {
        return Err(bad_ca(path, "holds no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not valid PEM ({other:?})"),
    }
}

fn bad_ca(path: &Path, reason: &str) -> TrustError {
    TrustError {
        code: "bad-ca-cert",
        message: format!("--ca-cert {}: {reason}", path.display()),
    }
}

/// The certificate check (module doc).
#[derive(Debug)]
struct Verifier {
    pin: Option<Vec<u8>>,
    webpki: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
    refused: Arc<Mutex<Option<Refusal>>>,
}

impl Verifier {
    fn refuse(&self, refusal: Refusal) {
        if let Ok(mut slot) = self.refused.lock() {
            *slot = Some(refusal);
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint(end_entity);
        if let Some(pin) = &self.pin {
            let digest = ring::digest::digest(&ring::digest::SHA256, end_entity);
            if digest.as_ref() == pin.as_slice() {
                return Ok(ServerCertVerified::assertion());
            }
            self.refuse(Refusal::Mismatch {
                presented,
                pinned: fingerprint_of_digest(pin),
            });
            return Err(rustls::Error::General(
                "the certificate is not the pinned one".into(),
            ));
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(|e| {
                self.refuse(Refusal::Unknown {
                    presented,
                    reason: e.to_string(),
                });
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `AB:CD:...` of raw digest bytes.
fn fingerprint_of_digest(digest: &[u8]) -> String {
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_read_with_or_without_colons_in_any_case() {
        let fp = fingerprint(b"any certificate");
        let want = parse_pin(&fp).unwrap();
        assert_eq!(want.len(), 32);
        assert_eq!(
            parse_pin(&fp.replace(':', "").to_lowercase()).unwrap(),
            want
        );
        assert_eq!(fingerprint_of_digest(&want), fp);
        for bad in ["", "AB:CD", &fp[3..], &fp.replace('A', "G")] {
            assert_eq!(parse_pin(bad).unwrap_err().code, "bad-pin", "{bad}");
        }
    }

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in [
            "http://127.0.0.1:8021",
            "http://localhost:8021",
            "http://[::1]:8021",
            "https://192.0.2.7:8021",
            "https://cloudlet.local:8021",
        ] {
            assert!(check_url(ok, false, None).is_ok(), "{ok}");
        }
        for refused in [
            "http://192.0.2.7:8021",
            "HTTP://cloudlet.local",
            "http://[fd00::2]",
        ] {
            assert_eq!(
                check_url(refused, false, None).unwrap_err().code,
                "insecure-url"
            );
            assert!(check_url(refused, true, None).is_ok(), "{refused}");
        }
    }

    #[test]
    fn a_certificate_option_over_plain_http_is_refused_not_ignored() {
        for url in ["http://127.0.0.1:8021", "http://192.0.2.7:8021"] {
            for option in ["--pin-sha256", "--ca-cert"] {
                let err = check_url(url, true, Some(option)).unwrap_err();
                assert_eq!(err.code, "trust-without-tls");
                assert!(err.message.contains(option), "{err}");
            }
        }
        assert!(check_url("https://192.0.2.7:8021", false, Some("--pin-sha256")).is_ok());
    }
}
