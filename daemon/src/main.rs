//! `cloudletd` entry point: flags, config, logging, then the daemon or a tool command.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cloudletd::config::LogFormat;
use cloudletd::Config;

/// cloudlet daemon: base VMs, VM overlays and VM synthesis for edge devices.
#[derive(Debug, Parser)]
#[command(version, about, after_long_help = cloudletd::config::SETTINGS_HELP)]
struct Cli {
    /// Config file (default /etc/cloudlet/cloudletd.toml; missing is fine).
    #[arg(long, global = true, env = "CLOUDLET_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Print the effective configuration as TOML.
    PrintConfig,
    /// Print the OpenAPI document of the REST API (docs/openapi.json).
    Openapi,
    /// Print the SHA-256 fingerprint of the API's TLS certificate, for devices to check
    /// or pin (`cloudlet --pin-sha256`).
    TlsFingerprint,
}

/// Log lines on stderr, as text or JSON, at the levels of `CLOUDLET_LOG` (default info).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLOUDLET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // The request span's fields (id, method, path) go on each line.
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    let config = match command {
        Command::Serve | Command::PrintConfig | Command::TlsFingerprint => {
            Some(Config::load(cli.config.as_deref()))
        }
        Command::Openapi => None,
    };
    let format = match &config {
        Some(Ok(c)) => c.log_format,
        _ => LogFormat::Text,
    };
    init_logging(format);
    match command {
        Command::Serve => {
            let config = config
                .unwrap_or_else(|| Ok(Config::default()))
                .context("loading configuration")?;
            tracing::info!(domain_type = %config.domain_type, "libvirt domain type of the VMs");
            if let Some(point) = cloudletd::fault::armed() {
                tracing::warn!(
                    point,
                    "{} is set: this daemon kills itself at that point (a test hook)",
                    cloudletd::fault::VAR
                );
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(cloudletd::run(config))
        }
        Command::PrintConfig => {
            let config = config
                .unwrap_or_else(|| Ok(Config::default()))
                .context("loading configuration")?;
            #[allow(clippy::print_stdout)]
            {
                print!("{}", config.to_toml());
            }
            Ok(())
        }
        Command::TlsFingerprint => {
            let config = config
                .unwrap_or_else(|| Ok(Config::default()))
                .context("loading configuration")?;
            let fingerprint = cloudletd::tls::configured_fingerprint(&config).context(
                "the daemon makes its certificate on its first start with TLS \
                 (a non-loopback listen, tls = \"on\", or tls_cert / tls_key)",
            )?;
            #[allow(clippy::print_stdout)]
            {
                println!("{fingerprint}");
            }
            Ok(())
        }
        Command::Openapi => {
            #[allow(clippy::print_stdout)]
            {
                print!("{}", cloudletd::api::openapi_json());
            }
            Ok(())
        }
    }
}
