//! Global options and what every command gets: the daemon client (made on first use, so
//! local-only commands never read the token file) and the output mode.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::client::{Client, TokenSource};
use crate::progress::Progress;

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
    /// Print JSON instead of human-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

/// What a command runs with.
pub struct Ctx {
    /// The global options.
    pub global: GlobalArgs,
    client: OnceLock<anyhow::Result<Client, String>>,
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

    /// The daemon client.
    pub fn client(&self) -> anyhow::Result<&Client> {
        self.client
            .get_or_init(|| {
                Client::new(&self.global.url, self.token_source()).map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
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
