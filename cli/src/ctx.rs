//! Global options and what every command gets: the daemon client (made on first use, so
//! local-only commands never read the token file) and the output mode.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::client::{Client, TokenSource};
use crate::progress::Progress;
use crate::tls;

/// Options valid on every command (listed under their own heading in every `--help`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// The daemon's URL.
    #[arg(
        long,
        env = "CLOUDLET_URL",
        default_value = "http://127.0.0.1:8021",
        global = true
    )]
    pub url: String,
    /// API token (default: read from --token-file).
    #[arg(long, env = "CLOUDLET_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the API token, read when no --token is given.
    #[arg(
        long,
        env = "CLOUDLET_TOKEN_FILE",
        default_value = "/etc/cloudlet/token",
        global = true
    )]
    pub token_file: PathBuf,
    /// Trust this CA or self-signed certificate (PEM) for an https URL, besides the
    /// public CAs.
    #[arg(long, env = "CLOUDLET_CA_CERT", global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Accept exactly the daemon certificate with this SHA-256 fingerprint (hex, colons
    /// optional, any case), as `cloudletd tls-fingerprint` prints it on the cloudlet.
    #[arg(long, env = "CLOUDLET_PIN_SHA256", global = true, value_name = "FP")]
    pub pin_sha256: Option<String>,
    /// Allow plain http:// to a non-loopback address: the token crosses the network in
    /// clear text.
    #[arg(long, env = "CLOUDLET_ALLOW_INSECURE", global = true)]
    pub allow_insecure: bool,
    /// Print JSON instead of human-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

/// Why the client could not be made (kept to answer every later call alike).
enum SetupError {
    /// A trust setting refuses (typed: its code reaches `--json`).
    Trust(tls::TrustError),
    /// Anything else.
    Other(String),
}

impl From<tls::TrustError> for SetupError {
    fn from(e: tls::TrustError) -> Self {
        SetupError::Trust(e)
    }
}

/// What a command runs with.
pub struct Ctx {
    /// The global options.
    pub global: GlobalArgs,
    client: OnceLock<Result<Client, SetupError>>,
}

impl Ctx {
    /// A context for these options.
    pub fn new(global: GlobalArgs) -> Self {
        Self {
            global,
            client: OnceLock::new(),
        }
    }

    /// Whether to print JSON.
    pub fn json(&self) -> bool {
        self.global.json
    }

    /// Progress drawing (off with --quiet or --json).
    pub fn progress(&self) -> Progress {
        Progress::new(!self.global.quiet && !self.global.json)
    }

    /// Host part of the daemon's URL: where a session's forwarded ports are reached too
    /// (the daemon forwards them on the address its API listens on, unless configured
    /// otherwise).
    pub fn api_host(&self) -> String {
        reqwest::Url::parse(&self.global.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "127.0.0.1".into())
    }

    /// The daemon client. Plain HTTP off loopback is refused here, before any connection.
    pub fn client(&self) -> anyhow::Result<&Client> {
        self.client
            .get_or_init(|| {
                let g = &self.global;
                let trust = match (&g.pin_sha256, &g.ca_cert) {
                    (Some(_), _) => Some("--pin-sha256"),
                    (None, Some(_)) => Some("--ca-cert"),
                    (None, None) => None,
                };
                tls::check_url(&g.url, g.allow_insecure, trust)?;
                let tls = tls::ClientTls::new(g.ca_cert.as_deref(), g.pin_sha256.as_deref())?;
                Client::new(&g.url, self.token_source(), tls)
                    .map_err(|e| SetupError::Other(format!("{e:#}")))
            })
            .as_ref()
            .map_err(|e| match e {
                SetupError::Trust(t) => t.clone().into(),
                SetupError::Other(e) => anyhow::anyhow!("{e}"),
            })
    }

    fn token_source(&self) -> TokenSource {
        if let Some(t) = self.global.token.as_ref().filter(|t| !t.trim().is_empty()) {
            return TokenSource::Given(t.trim().to_string());
        }
        let file = self.global.token_file.display().to_string();
        match std::fs::read_to_string(&self.global.token_file) {
            Ok(t) if !t.trim().is_empty() => TokenSource::File(file, t.trim().to_string()),
            Ok(_) => TokenSource::Missing(file, "empty".into()),
            Err(e) => TokenSource::Missing(file, crate::client::root_cause(&e)),
        }
    }
}
