//! `cloudletd`: the cloudlet daemon. It owns a data directory (catalogue + image files),
//! serves the HTTP API, and runs the overlay engine on its blocking pool.
// `deny`, not `forbid`: virt/libvirt.rs allows its one documented unsafe call (a domain
// save the `virt` crate does not wrap).
#![deny(unsafe_code)]

pub mod api;
pub mod config;
pub mod metrics;
pub mod service;
pub mod store;
pub mod virt;

use std::future::Future;

use anyhow::Context;
use tokio::net::TcpListener;

pub use config::Config;

/// Shared state of the running daemon.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The catalogue.
    pub store: store::Store,
    /// The data directory.
    pub data: store::DataDir,
    /// Effective configuration.
    pub config: std::sync::Arc<Config>,
    /// libvirt.
    pub hv: virt::Hypervisor,
    /// The API token.
    pub token: api::auth::Token,
    /// Syntheses allowed to run now (`max_concurrent_syntheses`).
    pub synthesis_slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Prometheus metrics.
    pub metrics: std::sync::Arc<metrics::Metrics>,
    /// Held while a base archive is built for download.
    pub export_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// Opens the data directory and catalogue, repairs what a crash interrupted.
pub async fn open_state(config: Config) -> anyhow::Result<AppState> {
    let data = store::DataDir::create(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    service::error::set_data_dir(data.root());
    let store = store::Store::open(&data.database())
        .await
        .with_context(|| format!("opening catalogue {}", data.database().display()))?;
    store::reconcile::reconcile(&store, &data)
        .await
        .context("repairing the data directory")?;
    let token = api::auth::load_or_create(&config.token_file)
        .with_context(|| format!("API token file {}", config.token_file.display()))?;
    let hv = virt::Hypervisor::new(&config.libvirt_uri);
    let state = AppState {
        store,
        data,
        synthesis_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_syntheses,
        )),
        config: std::sync::Arc::new(config),
        hv,
        token,
        metrics: std::sync::Arc::default(),
        export_lock: std::sync::Arc::default(),
    };
    match state.hv.check().await {
        Ok(version) => {
            tracing::info!(uri = %state.config.libvirt_uri, %version, "libvirt ready");
            if let Err(e) = state.reap_orphan_vms().await {
                tracing::warn!(error = %e, "cannot clean up VMs of a previous run");
            }
        }
        // The daemon still serves what needs no VM (catalogue, overlays); VM requests fail
        // with a hypervisor error until libvirtd answers.
        Err(e) => {
            tracing::warn!(uri = %state.config.libvirt_uri, error = %e, "libvirt unavailable")
        }
    }
    Ok(state)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("listener address")?;
    tracing::info!(%addr, data_dir = %state.data.root().display(), "cloudletd listening");
    let store = state.store.clone();
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")?;
    store.close().await;
    tracing::info!("cloudletd stopped");
    Ok(())
}

/// Runs the daemon with `config` until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let state = open_state(config).await?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    serve(state, listener, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
