//! `cloudletd`: the cloudlet daemon. It owns a data directory (catalogue + image files),
//! serves the HTTP API, and runs the overlay engine on its blocking pool.
// `deny`, not `forbid`: virt/libvirt.rs allows its one documented unsafe call (a domain
// save the `virt` crate does not wrap).
#![deny(unsafe_code)]

pub mod api;
pub mod config;
pub mod confine;
pub mod conn;
pub mod devkvm;
pub mod fault;
pub mod metrics;
pub mod notify;
pub mod service;
pub mod store;
pub mod tls;
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
    /// Syntheses allowed to run now (`max_concurrent_syntheses`).
    pub synthesis_slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Prometheus metrics.
    pub metrics: std::sync::Arc<metrics::Metrics>,
    /// Held while a base archive is built for download.
    pub export_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The VMs' unprivileged users (or why there are none).
    pub confine: std::sync::Arc<confine::Confinement>,
    /// Set once the previous run's VMs are reconciled with libvirt ([`adopt_vms`]); until
    /// then `/health` says `starting` and other routes answer 503.
    pub ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Plain HTTP or TLS (and with which certificate).
    pub transport: tls::Transport,
    /// The warm standby VM for the next overlay session, if any (`overlay_standby`);
    /// locked while one is made.
    pub standby: std::sync::Arc<tokio::sync::Mutex<Option<service::standby::Standby>>>,
    /// The primed restores for the next syntheses, one per base at most
    /// (`synthesis_standby`).
    pub synthesis_standbys: std::sync::Arc<service::synthesis_standby::SynthesisStandbys>,
}

/// Opens the data directory and catalogue, repairs what a crash interrupted.
pub async fn open_state(config: Config) -> anyhow::Result<AppState> {
    let data = store::DataDir::create(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    service::error::set_data_dir(data.root());
    let confine = confine::Confinement::set_up(&config, &data).context("confining the VMs")?;
    let store = store::Store::open(&data.database())
        .await
        .with_context(|| format!("opening catalogue {}", data.database().display()))?;
    store::reconcile::reconcile(&store, &data)
        .await
        .context("repairing the data directory")?;
    let bootstrap = api::auth::load_or_create(&config.token_file)
        .with_context(|| format!("API token file {}", config.token_file.display()))?;
    let transport = tls::setup(&config)?;
    log_transport(&transport, config.listen);
    let hv = virt::Hypervisor::new(&config.libvirt_uri);
    let state = AppState {
        store,
        data,
        synthesis_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_syntheses,
        )),
        config: std::sync::Arc::new(config),
        hv,
        metrics: std::sync::Arc::default(),
        export_lock: std::sync::Arc::default(),
        confine: std::sync::Arc::new(confine),
        ready: std::sync::Arc::default(),
        transport,
        standby: std::sync::Arc::default(),
        synthesis_standbys: std::sync::Arc::default(),
    };
    // The token file's secret is the first admin token (existing deployments keep working).
    state
        .import_token_file(&bootstrap)
        .await
        .context("importing the token file's token")?;
    Ok(state)
}

/// Says at start how the API is carried: the fingerprint devices pin, or a loud warning
/// for plain HTTP off loopback.
fn log_transport(transport: &tls::Transport, listen: std::net::SocketAddr) {
    match transport {
        tls::Transport::Tls(t) => tracing::info!(
            cert = %t.cert.display(),
            sha256 = %t.fingerprint,
            self_signed = t.self_signed,
            "API served over TLS; devices check or pin this SHA-256 fingerprint \
             (`cloudletd tls-fingerprint` prints it)"
        ),
        tls::Transport::Plain { insecure: true } => tracing::warn!(
            %listen,
            "INSECURE: tls = \"off\" on a non-loopback address: the API token and every \
             request cross the network in clear text, readable by anyone on it"
        ),
        tls::Transport::Plain { insecure: false } => {}
    }
}

/// Reconciles the previous run's VMs with libvirt (re-adopts running ones, destroys
/// those of interrupted work), every libvirt call bounded by `libvirt_timeout_s`, then
/// marks the daemon ready. Runs while the daemon already answers `/health`.
pub async fn adopt_vms(state: AppState) {
    let limit = std::time::Duration::from_secs(state.config.libvirt_timeout_s);
    match tokio::time::timeout(limit, state.hv.check()).await {
        Ok(Ok(version)) => {
            tracing::info!(uri = %state.config.libvirt_uri, %version, "libvirt ready");
            match tokio::time::timeout(limit, state.adopt_running_vms()).await {
                Ok(Ok(a)) => {
                    tracing::info!(?a, "sessions of the previous run reconciled with libvirt");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot reconcile the previous run's VMs"),
                Err(_) => tracing::error!(
                    "libvirt did not finish listing VMs in {} s (setting libvirt_timeout_s); \
                     running sessions stay unverified",
                    limit.as_secs()
                ),
            }
        }
        Err(_) => tracing::error!(
            uri = %state.config.libvirt_uri,
            "libvirt did not answer in {} s (setting libvirt_timeout_s); VM requests will \
             fail until it does, running sessions stay unverified",
            limit.as_secs()
        ),
        // The daemon still serves what needs no VM (catalogue, overlays); VM requests fail
        // with a hypervisor error until libvirtd answers.
        Ok(Err(e)) => {
            tracing::warn!(uri = %state.config.libvirt_uri, error = %e, "libvirt unavailable")
        }
    }
    state
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    tracing::info!("cloudletd ready");
    state.standbys_after_start().await;
    notify::notify("READY=1\nSTATUS=serving");
}

/// Serves the API on `listener` until `shutdown` resolves. HTTP/1.1 connections must send
/// each request's headers within `header_timeout_s` (which also closes idle ones), and at
/// most `max_connections` are open at once: a slow or silent client cannot starve the
/// others of file descriptors or tasks.
/// With TLS (`state.transport`) each connection's handshake runs in its own task after
/// it took a slot, bounded by `header_timeout_s` too.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("listener address")?;
    let tls = state.transport.acceptor();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, data_dir = %state.data.root().display(), "cloudletd listening");
    let store = state.store.clone();
    let config = state.config.clone();
    let standby = state.clone();
    let app = api::router(state);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(config.header_timeout_s))
        .max_headers(conn::MAX_HEADERS)
        .max_buf_size(conn::MAX_HEAD_BYTES);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // A TLS client cannot read a plain answer: it is only closed.
            if tls.is_none() {
                refuse_connection(&stream, config.max_connections);
            }
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let (http, watcher, tls) = (http.clone(), graceful.watcher(), tls.clone());
        let handshake_limit = std::time::Duration::from_secs(config.header_timeout_s);
        tokio::spawn(async move {
            match tls {
                None => serve_connection(&http, stream, service, watcher, peer).await,
                // The handshake is bounded like a request head: a client that connects
                // and stays silent gives its slot back after `header_timeout_s`.
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_limit, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(&http, stream, service, watcher, peer).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    notify::notify("STOPPING=1");
    // Requests in flight get a moment to answer; long work runs on in its own tasks.
    if tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s; closing them");
    }
    // A standby VM is nobody's session: it would only wait for the next start's cleanup.
    if tokio::time::timeout(
        std::time::Duration::from_secs(10),
        standby.discard_standby(),
    )
    .await
    .is_err()
    {
        tracing::warn!("the standby VM was not destroyed within 10 s; the next start will");
    }
    store.close().await;
    tracing::info!("cloudletd stopped");
    Ok(())
}

/// Serves HTTP/1.1 on one accepted connection (plain TCP or TLS) until it ends.
async fn serve_connection<S>(
    http: &hyper::server::conn::http1::Builder,
    stream: S,
    service: hyper_util::service::TowerToHyperService<axum::Router>,
    watcher: hyper_util::server::graceful::Watcher,
    peer: std::net::SocketAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // hyper's own answers to heads it cannot parse get the JSON error body.
    let io = hyper_util::rt::TokioIo::new(conn::JsonHeadErrors::new(stream));
    if let Err(e) = watcher.watch(http.serve_connection(io, service)).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Answers a connection over `max_connections` with 503 (best effort, never waiting:
/// the peer may be one of those holding connections open) and closes it.
fn refuse_connection(stream: &tokio::net::TcpStream, max: usize) {
    let body = cloudlet_api::ErrorBody {
        error: cloudlet_api::ErrorDetail {
            code: cloudlet_api::ErrorCode::Busy,
            message: format!(
                "{max} connections are open (setting max_connections); retry in a moment"
            ),
            request_id: None,
        },
    };
    let body = serde_json::to_string(&body).unwrap_or_default();
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Retry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(reply.as_bytes());
    tracing::warn!(max, "connection refused: too many open");
}

/// Runs the daemon with `config` until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let state = open_state(config).await?;
    // Bound first: systemd's READY=1 (sent once the VMs are reconciled) means "answering".
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    notify::notify("STATUS=reconciling the previous run's VMs with libvirt");
    tokio::spawn(adopt_vms(state.clone()));
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
