//! The real `cloudletd` binary, started on a free loopback port with a temporary data
//! directory; stopped (SIGTERM) and cleaned up on drop. Started with TLS
//! ([`Daemon::start_tls`], [`Launch`]), its raw HTTP helpers speak TLS too, trusting the
//! certificate the daemon made.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};

/// Path of a workspace binary, building it once if the test run did not.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/<profile>/deps/<test> (tests) or target/<profile>/<bin> → target/<profile>/<name>
    let mut profile_dir = exe.parent().context("target dir")?.to_path_buf();
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir.pop();
    }
    let path = profile_dir.join(name);
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(crate::repo_root()).args([
                "build",
                "-p",
                "cloudletd",
                "-p",
                "cloudlet",
                "--bins",
            ]);
            // What `cargo test`/`cargo run` set for the running crate must not reach this
            // build: ring's build script watches CARGO_MANIFEST_DIR, so an inherited value
            // made every build from a shell and every build from here rebuild the TLS stack.
            for (key, _) in std::env::vars_os() {
                if key.to_str().is_some_and(is_cargo_run_var) {
                    cmd.env_remove(key);
                }
            }
            if profile == "release" {
                cmd.arg("--release");
            }
            match cmd.status() {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(format!("cargo build of the binaries failed: {s}")),
                Err(e) => Err(format!("cannot run cargo: {e}")),
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)?;
    Ok(path)
}

/// Whether `key` is one of the variables cargo sets for the crate it runs (not one that
/// configures cargo, like CARGO_HOME or CARGO_TARGET_DIR).
fn is_cargo_run_var(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
        )
}

/// A running daemon.
pub struct Daemon {
    child: Option<Child>,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its API token (read from the token file it created).
    pub token: String,
    /// Its token file (`CLOUDLET_TOKEN_FILE`).
    pub token_file: PathBuf,
    /// With TLS: the client side trusting the daemon's certificate (known once the
    /// daemon made it).
    pub tls: Option<TlsClient>,
    _tmp: Option<TempDir>,
    log: PathBuf,
}

/// How to start a daemon, beyond its environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Launch {
    /// Serve TLS (`CLOUDLET_TLS=on`) even on loopback.
    pub tls: bool,
    /// Listen on this address (a free port on it) instead of 127.0.0.1; the daemon
    /// serves TLS on any other than loopback.
    pub ip: Option<IpAddr>,
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TempDir {
    /// A new empty directory under the system temp dir.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(crate::unique_name(tag));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Daemon {
    /// Starts a daemon with a fresh data directory.
    pub fn start(tag: &str) -> anyhow::Result<Self> {
        let tmp = TempDir::new(tag)?;
        let data_dir = tmp.0.join("data");
        let mut d = Self::start_in(&data_dir, &[])?;
        d._tmp = Some(tmp);
        Ok(d)
    }

    /// Starts a daemon serving TLS on loopback with a fresh data directory.
    pub fn start_tls(tag: &str) -> anyhow::Result<Self> {
        let tmp = TempDir::new(tag)?;
        let data_dir = tmp.0.join("data");
        let how = Launch {
            tls: true,
            ip: None,
        };
        let mut d = Self::launch(&data_dir, &[], how)?;
        d._tmp = Some(tmp);
        Ok(d)
    }

    /// Starts a daemon on `data_dir` with extra environment variables.
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::launch(data_dir, env, Launch::default())
    }

    /// Starts a daemon on `data_dir` with extra environment variables, as `how` says.
    pub fn launch(data_dir: &Path, env: &[(&str, &str)], how: Launch) -> anyhow::Result<Self> {
        let ip = how.ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let addr = free_port_on(ip)?;
        let off = env.contains(&("CLOUDLET_TLS", "off"));
        let tls = (how.tls || !ip.is_loopback()) && !off;
        let log = data_dir.with_extension("log");
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let token_file = data_dir.with_extension("token");
        let child = Command::new(binary("cloudletd")?)
            .env("CLOUDLET_LISTEN", addr.to_string())
            .env("CLOUDLET_TOKEN_FILE", &token_file)
            .env("CLOUDLET_DATA_DIR", data_dir)
            .env("CLOUDLET_DOMAIN_TYPE", "qemu")
            .env("CLOUDLET_TLS", if how.tls { "on" } else { "auto" })
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting cloudletd")?;
        let mut daemon = Self {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            addr,
            token: String::new(),
            token_file,
            tls: None,
            _tmp: None,
            log,
        };
        daemon.wait_healthy(Duration::from_secs(30), tls)?;
        daemon.token = std::fs::read_to_string(&daemon.token_file)
            .context("reading the daemon's token file")?
            .trim()
            .to_string();
        Ok(daemon)
    }

    /// Waits for `/health` to say `ok`; with `tls`, over TLS once the certificate exists.
    fn wait_healthy(&mut self, timeout: Duration, tls: bool) -> anyhow::Result<()> {
        let cert = self.cert_file();
        let ok = crate::wait_until(timeout, || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(Err(status));
                }
            }
            if tls && self.tls.is_none() {
                self.tls = TlsClient::trusting(&cert).ok();
                self.tls.as_ref()?;
            }
            match send_over(self.addr, self.tls.as_ref(), "GET", "/health", &[], &[]) {
                Ok(Reply {
                    status: 200, body, ..
                }) if String::from_utf8_lossy(&body).contains(r#""status":"ok""#) => Some(Ok(())),
                _ => None,
            }
        });
        match ok {
            Some(Ok(())) => Ok(()),
            Some(Err(status)) => bail!(
                "cloudletd exited ({status}) before answering:\n{}",
                self.log_text()
            ),
            None => bail!(
                "cloudletd did not answer /health within {timeout:?}:\n{}",
                self.log_text()
            ),
        }
    }

    /// The self-signed certificate a daemon with TLS makes next to its token file.
    pub fn cert_file(&self) -> PathBuf {
        self.token_file.with_file_name("tls-cert.pem")
    }

    /// Its base URL: `https://ADDR` with TLS, else `http://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The SHA-256 fingerprint of its certificate (with TLS).
    pub fn fingerprint(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.fingerprint.as_str())
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A metric of `/metrics` without labels (`cloudlet_standby_vms`, ...).
    pub fn metric(&self, name: &str) -> anyhow::Result<u64> {
        let (status, body) = self.get("/metrics")?;
        anyhow::ensure!(status == 200, "/metrics: {status}");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {name} in /metrics"))
    }

    /// The `cloudlet-*` VMs of this daemon's data directory that no session has: its
    /// standbys (a standby's VM becomes a session's only when a session takes it).
    pub fn standby_vms(&self) -> anyhow::Result<Vec<String>> {
        let (status, sessions) = self.get("/api/v1/sessions")?;
        anyhow::ensure!(status == 200, "/api/v1/sessions: {status}");
        let sessions: serde_json::Value = serde_json::from_str(&sessions)?;
        let session_vms: Vec<&str> = sessions
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["vm_name"].as_str()).collect())
            .unwrap_or_default();
        Ok(crate::domains_with_prefix("cloudlet-")
            .into_iter()
            .filter(|vm| !session_vms.contains(&vm.as_str()))
            .filter(|vm| {
                let id = vm.trim_start_matches("cloudlet-");
                self.data_dir.join("sessions").join(id).is_dir()
            })
            .collect())
    }

    /// GET `path` with the token; (status, body).
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let (status, bytes) = self.send("GET", path, &[], &[])?;
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// The `Authorization` header with this daemon's token.
    pub fn auth(&self) -> (&'static str, String) {
        ("Authorization", format!("Bearer {}", self.token))
    }

    /// A request with the token and `headers`; (status, body).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let reply = self.send_full(method, path, headers, body)?;
        Ok((reply.status, reply.body))
    }

    /// As [`Self::send`], with the answer's headers.
    pub fn send_full(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<Reply> {
        let (key, value) = self.auth();
        let mut all: Vec<(&str, &str)> = vec![(key, &value)];
        all.extend_from_slice(headers);
        send_over(self.addr, self.tls.as_ref(), method, path, &all, body)
    }

    /// Starts a chunked upload of `first` to `path` and leaves the connection open (the
    /// request stays in progress until the stream is dropped or written to). Plain TCP:
    /// for a daemon without TLS (see [`Self::held_upload`] for either).
    pub fn stalled_upload(&self, path: &str, first: &[u8]) -> TcpStream {
        let mut s = TcpStream::connect(self.addr).expect("connecting to the daemon");
        self.start_upload(&mut s, path, first)
            .and_then(|()| s.set_read_timeout(Some(Duration::from_secs(30))))
            .expect("starting the upload");
        s
    }

    /// As [`Self::stalled_upload`], over TLS when the daemon serves it.
    pub fn held_upload(&self, path: &str, first: &[u8]) -> Box<dyn ReadWrite> {
        let mut s: Box<dyn ReadWrite> = match &self.tls {
            Some(tls) => tls.connect(self.addr).expect("connecting to the daemon"),
            None => Box::new(TcpStream::connect(self.addr).expect("connecting to the daemon")),
        };
        self.start_upload(&mut s, path, first)
            .and_then(|()| s.flush())
            .expect("starting the upload");
        s
    }

    fn start_upload(&self, s: &mut impl Write, path: &str, first: &[u8]) -> std::io::Result<()> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: Bearer {}\r\nContent-Type: application/octet-stream\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
            self.token
        );
        s.write_all(head.as_bytes())?;
        if !first.is_empty() {
            // (an empty chunk would end the body)
            s.write_all(format!("{:x}\r\n", first.len()).as_bytes())?;
            s.write_all(first)?;
            s.write_all(b"\r\n")?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for the daemon to exit by itself: its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = crate::wait_until(timeout, || child.try_wait().ok().flatten());
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Kills the daemon (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon with SIGTERM and waits for it.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("daemon already stopped")?;
        crate::run("kill", &["-TERM", &child.id().to_string()])?;
        let status = crate::wait_until(Duration::from_secs(20), || child.try_wait().ok().flatten());
        match status {
            Some(s) => Ok(s),
            None => {
                let _ = child.kill();
                bail!("cloudletd did not stop within 20 s of SIGTERM")
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.token_file);
        if self.tls.is_some() {
            let _ = std::fs::remove_file(self.cert_file());
            let _ = std::fs::remove_file(self.token_file.with_file_name("tls-key.pem"));
        }
    }
}

fn free_port_on(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind((ip, 0))?;
    Ok(l.local_addr()?)
}

/// An IPv4 address of this machine other than loopback, if it has one.
pub fn non_loopback_ipv4() -> Option<IpAddr> {
    if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .map(|i| i.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
}

/// The client side of a daemon's TLS: trusts exactly its certificate (as a root).
#[derive(Clone)]
pub struct TlsClient {
    config: std::sync::Arc<rustls::ClientConfig>,
    /// SHA-256 of the certificate, `AB:CD:...` (as the daemon prints it).
    pub fingerprint: String,
}

impl TlsClient {
    /// Trusts the PEM certificate in `cert`.
    pub fn trusting(cert: &Path) -> anyhow::Result<Self> {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_file(cert)
            .with_context(|| format!("reading {}", cert.display()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der)?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config: std::sync::Arc::new(config),
            fingerprint: digest,
        })
    }

    /// A TLS stream to `addr` (handshake done on first use).
    pub fn connect(&self, addr: SocketAddr) -> anyhow::Result<Box<dyn ReadWrite>> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        tcp.set_read_timeout(Some(Duration::from_secs(600)))?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let conn = rustls::ClientConnection::new(self.config.clone(), name)?;
        Ok(Box::new(rustls::StreamOwned::new(conn, tcp)))
    }
}

/// A byte stream to the daemon: plain TCP or TLS.
pub trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// A minimal HTTP/1.1 GET without a token.
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let reply = send(addr, "GET", path, &[], &[])?;
    Ok((
        reply.status,
        String::from_utf8_lossy(&reply.body).into_owned(),
    ))
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header lines (`name: value` per line, names lowercased).
    pub headers: String,
    /// Body (chunked transfer decoded).
    pub body: Vec<u8>,
}

impl Reply {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
                .map(str::trim)
        })
    }

    /// The body as JSON (Null when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A minimal HTTP/1.1 request with `headers` and `body` (Content-Length always sent).
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Reply> {
    send_over(addr, None, method, path, headers, body)
}

/// As [`send`], over TLS when `tls` is given.
pub fn send_over(
    addr: SocketAddr,
    tls: Option<&TlsClient>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Reply> {
    let mut s: Box<dyn ReadWrite> = match tls {
        Some(tls) => tls.connect(addr)?,
        None => {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            // VM flows answer when the VM is ready: allow minutes under TCG.
            s.set_read_timeout(Some(Duration::from_secs(600)))?;
            Box::new(s)
        }
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes())?;
    // The daemon may answer (an error) before reading the whole body: keep the answer.
    let _ = s.write_all(body);
    let _ = s.flush();
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        // A TLS peer that closes without close_notify: what came is the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        other => {
            other?;
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    // Header names lowercased, values as sent.
    let headers: String = String::from_utf8_lossy(&raw[..split])
        .lines()
        .map(|l| match l.split_once(':') {
            Some((name, value)) => format!("{}:{value}\n", name.to_ascii_lowercase()),
            None => format!("{l}\n"),
        })
        .collect();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let mut rest = &raw[split + 4..];
    if !headers.contains("transfer-encoding: chunked") {
        return Ok(Reply {
            status,
            headers,
            body: rest.to_vec(),
        });
    }
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16)?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(Reply {
                status,
                headers,
                body: out,
            });
        }
        out.extend_from_slice(rest.get(..size).context("truncated chunk")?);
        rest = rest.get(size + 2..).context("truncated chunk")?;
    }
}

impl Daemon {
    /// A JSON request; (status, parsed body or Null).
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let ct: &[(&str, &str)] = if body.is_some() {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        let reply = self.send_full(method, path, ct, bytes.as_bytes())?;
        Ok((reply.status, reply.json()))
    }

    /// Uploads raw bytes; (status, parsed body).
    pub fn upload(&self, path: &str, bytes: &[u8]) -> anyhow::Result<(u16, serde_json::Value)> {
        let reply = self.send_full(
            "POST",
            path,
            &[("Content-Type", "application/octet-stream")],
            bytes,
        )?;
        Ok((reply.status, reply.json()))
    }
}
