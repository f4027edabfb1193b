//! The `cloudlet` binary, run against a test daemon the way a user runs it.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a test failure

use std::process::{Command, Output};

use serde_json::Value;

use crate::daemon::binary;
use crate::Daemon;

/// `cloudlet` with the daemon's URL and token file (or a token of its own: a device's);
/// over https pinning the daemon's certificate (`CLOUDLET_PIN_SHA256`) when the daemon
/// serves TLS.
pub struct Cli<'a> {
    /// The daemon it talks to.
    pub d: &'a Daemon,
    /// `CLOUDLET_TOKEN`, instead of the daemon's token file.
    pub token: Option<String>,
}

impl<'a> Cli<'a> {
    /// `cloudlet` as the cloudlet's operator (the daemon's token file: admin).
    pub fn new(d: &'a Daemon) -> Self {
        Self { d, token: None }
    }

    /// `cloudlet` as a device: its own token, nothing read from the cloudlet's files.
    pub fn with_token(d: &'a Daemon, token: &str) -> Self {
        Self {
            d,
            token: Some(token.to_string()),
        }
    }

    /// `cloudlet` set up for the daemon, without arguments yet.
    pub fn command(&self) -> Command {
        let mut c = Command::new(binary("cloudlet").unwrap());
        c.env("CLOUDLET_URL", self.d.url())
            .env("CLOUDLET_TOKEN_FILE", &self.d.token_file)
            .env_remove("CLOUDLET_TOKEN")
            .env_remove("CLOUDLET_CA_CERT")
            .env_remove("CLOUDLET_ALLOW_INSECURE")
            .env_remove("CLOUDLET_PIN_SHA256");
        if let Some(fp) = self.d.fingerprint() {
            c.env("CLOUDLET_PIN_SHA256", fp);
        }
        if let Some(token) = &self.token {
            c.env("CLOUDLET_TOKEN", token)
                .env("CLOUDLET_TOKEN_FILE", "/nonexistent/token");
        }
        c
    }

    /// `cloudlet ARGS` talking to the daemon through `addr` (a relay in front of it): the
    /// daemon's scheme and trust settings, another address.
    pub fn command_via(&self, addr: std::net::SocketAddr, args: &[&str]) -> Command {
        let url = self.d.url();
        let scheme = url.split("://").next().unwrap_or("http");
        let mut c = self.command();
        c.env("CLOUDLET_URL", format!("{scheme}://{addr}"))
            .args(args);
        c
    }

    /// `cloudlet ARGS`, whatever its outcome.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// `cloudlet ARGS`; asserts success (with the daemon's log), returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "cloudlet {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.d.log_text()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `cloudlet --json ARGS`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// `cloudlet ARGS` with `input` on stdin; asserts success, returns stdout.
    pub fn with_stdin(&self, args: &[&str], input: &str) -> String {
        use std::io::Write;
        let mut child = self
            .command()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "cloudlet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `cloudlet run ID -- CMD` → its trimmed output.
    pub fn run(&self, id: &str, command: &str) -> String {
        self.ok(&["run", id, "--", command]).trim().to_string()
    }
}

/// A `cloudlet` command running in the background, its stderr collected as it comes.
pub struct Background {
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Background {
    /// Starts `command` with stdout and stderr piped.
    pub fn spawn(mut command: Command) -> Self {
        use std::io::BufRead;
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self { child, stderr }
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether its stderr shows `text` within `timeout`.
    pub fn stderr_shows(&self, text: &str, timeout: std::time::Duration) -> bool {
        crate::wait_until(timeout, || self.stderr().contains(text).then_some(())).is_some()
    }

    /// Waits for it; asserts success and parses its stdout as JSON.
    pub fn finish_json(&mut self) -> Value {
        use std::io::Read;
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut out).unwrap();
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "cloudlet failed: {out}{}", self.stderr());
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}
