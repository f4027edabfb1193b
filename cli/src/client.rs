//! HTTP client of the daemon (reqwest, blocking): bearer token on every request, one typed
//! error for every non-2xx answer, and the NDJSON progress mode of the long requests.
//!
//! No request timeout: creating a base or synthesizing a VM takes minutes under TCG. Only
//! connecting is bounded, so an unreachable daemon is reported at once.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::time::Duration;

use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;
use serde_json::Value;

use cloudlet_api::{ErrorBody, ErrorCode, ProgressLine};

/// Media type of the progress stream.
pub use cloudlet_api::NDJSON;

/// An error answered by the daemon (or found by the CLI about a daemon object, such as an
/// ambiguous session prefix). Shown as `message (code)`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Stable code: `not-found`, `path-not-allowed`, ... (docs/api.md).
    pub code: String,
    /// Human message.
    pub message: String,
    /// One more hint of the CLI's, e.g. where the token comes from.
    pub hint: Option<String>,
    /// The answer's `Retry-After` in seconds (`busy`, `idempotency-in-progress`).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error the CLI found itself, in the daemon's vocabulary.
    pub fn local(code: &str, message: String) -> Self {
        Self {
            code: code.into(),
            message,
            hint: None,
            retry_after_s: None,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)?;
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// The daemon could not be talked to at all (typed so that `--json` errors can say so).
#[derive(Debug, Clone)]
pub struct TransportError {
    /// No connection could be made (as opposed to one that broke).
    pub unreachable: bool,
    /// The one-line explanation.
    pub message: String,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TransportError {}

/// Where the token came from, to explain a 401.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// `--token` / `CLOUDLET_TOKEN`.
    Given(String),
    /// Read from this file.
    File(String, String),
    /// None: the file could not be read, for this reason.
    Missing(String, String),
}

impl TokenSource {
    fn token(&self) -> Option<&str> {
        match self {
            TokenSource::Given(t) | TokenSource::File(_, t) => Some(t),
            TokenSource::Missing(..) => None,
        }
    }

    fn unauthorized_hint(&self) -> String {
        match self {
            TokenSource::Given(_) => {
                "the token given by --token / CLOUDLET_TOKEN was refused".into()
            }
            TokenSource::File(file, _) => format!("the token read from {file} was refused"),
            TokenSource::Missing(file, why) => format!(
                "no token: {file}: {why}; pass --token, set CLOUDLET_TOKEN or CLOUDLET_TOKEN_FILE"
            ),
        }
    }
}

/// The daemon at one URL.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: TokenSource,
    http: reqwest::blocking::Client,
    /// What the TLS verifier refused, to explain a failed handshake.
    refused: crate::tls::Refused,
}

impl Client {
    /// A client of the daemon at `url` (e.g. `http://127.0.0.1:8021`), trusting the
    /// server certificates `tls` does.
    pub fn new(url: &str, token: TokenSource, tls: crate::tls::ClientTls) -> anyhow::Result<Self> {
        let refused = tls.refused();
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(None)
            .user_agent(concat!("cloudlet/", env!("CARGO_PKG_VERSION")))
            .use_preconfigured_tls(tls.config)
            .build()?;
        Ok(Self {
            base: url.trim_end_matches('/').to_string(),
            token,
            http,
            refused,
        })
    }

    /// A request to `path` (starting with `/`) with the bearer token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match self.token.token() {
            Some(t) => rb.header(AUTHORIZATION, format!("Bearer {t}")),
            None => rb,
        }
    }

    /// Sends a request; a non-2xx answer becomes an [`ApiError`].
    pub fn send(&self, rb: RequestBuilder) -> anyhow::Result<Response> {
        self.check(self.send_raw(rb)?)
    }

    /// Sends a request and returns the answer whatever its status (downloads look at 416
    /// themselves); only connection failures are errors.
    pub fn send_raw(&self, rb: RequestBuilder) -> anyhow::Result<Response> {
        rb.send().map_err(|e| self.transport_error(&e))
    }

    /// The answer when 2xx, else its [`ApiError`].
    pub fn check(&self, resp: Response) -> anyhow::Result<Response> {
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(self.error_of(resp).into())
        }
    }

    /// A JSON request (`body` as JSON when given); the answer as JSON.
    pub fn json(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut rb = self.request(method, path);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        read_json(self.send(rb)?)
    }

    /// GET `path` as JSON.
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.json(Method::GET, path, None)
    }

    /// A long request in progress mode: asks for the NDJSON stream and hands each event to
    /// `on_event`; returns the final body. A daemon without progress mode answers plain
    /// JSON, which is returned as is.
    pub fn with_progress(
        &self,
        rb: RequestBuilder,
        mut on_event: impl FnMut(&ProgressLine),
    ) -> anyhow::Result<Value> {
        let resp = self.send(rb.header(ACCEPT, NDJSON))?;
        let is_stream = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with(NDJSON));
        if !is_stream {
            return read_json(resp);
        }
        for line in BufReader::new(resp).lines() {
            // A cut here is a broken connection like any other: the caller may retry.
            let line = line.map_err(|e| TransportError {
                unreachable: false,
                message: format!("reading the daemon's progress from {}: {e}", self.base),
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let Some(event) = ProgressLine::parse(&line)
                .map_err(|e| anyhow::anyhow!("bad progress line from the daemon: {e}"))?
            else {
                continue; // a line type of a newer daemon
            };
            match event {
                ProgressLine::Result { body, .. } => return Ok(body),
                ProgressLine::Error { error, .. } => {
                    return Err(self
                        .api_error(error.code.as_str().into(), error.message)
                        .into())
                }
                other => on_event(&other),
            }
        }
        Err(TransportError {
            unreachable: false,
            message: format!(
                "the progress stream from {} ended without a result (connection closed)",
                self.base
            ),
        }
        .into())
    }

    /// Connection-level failures: one line naming the URL and what to do.
    pub fn transport_error(&self, e: &reqwest::Error) -> anyhow::Error {
        // A refused certificate: say which one and what to compare it with.
        if let Some(trust) = self.refused.explain(&self.base) {
            return trust.into();
        }
        let cause = root_cause(e);
        let message = if e.is_connect() {
            format!(
                "cannot reach cloudletd at {} ({cause}); start it with `systemctl start cloudletd` \
                 or point CLOUDLET_URL / --url at it",
                self.base
            )
        } else {
            format!("talking to cloudletd at {}: {cause}", self.base)
        };
        TransportError {
            unreachable: e.is_connect(),
            message,
        }
        .into()
    }

    fn error_of(&self, resp: Response) -> ApiError {
        let status = resp.status();
        let retry_after_s = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let text = resp.text().unwrap_or_default();
        let mut error = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) if body.error.code != ErrorCode::Unknown => {
                self.api_error(body.error.code.as_str().into(), body.error.message)
            }
            Ok(body) => self.api_error(format!("http-{}", status.as_u16()), body.error.message),
            // Not our error shape (a proxy, or a daemon older than the route).
            Err(_) => {
                let code = match status.as_u16() {
                    401 => "unauthorized".to_string(),
                    404 => "not-found".to_string(),
                    s => format!("http-{s}"),
                };
                self.api_error(code, format!("the daemon answered {status}"))
            }
        };
        error.retry_after_s = retry_after_s;
        error
    }

    fn api_error(&self, code: String, message: String) -> ApiError {
        let hint = (code == "unauthorized").then(|| self.token.unauthorized_hint());
        ApiError {
            code,
            message,
            hint,
            retry_after_s: None,
        }
    }
}

/// The body of a successful answer as JSON (Null when empty).
pub fn read_json(resp: Response) -> anyhow::Result<Value> {
    let text = resp
        .text()
        .map_err(|e| anyhow::anyhow!("reading the daemon's answer: {}", root_cause(&e)))?;
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("the daemon's answer is not JSON: {e}"))
}

/// The innermost error message (reqwest's own are "error sending request for url ...").
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Percent-encodes one path segment (a base selector may be a disk path with slashes).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("tiny"), "tiny");
        assert_eq!(segment("/srv/a b.img"), "%2Fsrv%2Fa%20b.img");
    }

    #[test]
    fn api_errors_read_as_one_line() {
        let e = ApiError::local("not-found", "no session matches `x`".into());
        assert_eq!(e.to_string(), "no session matches `x` (not-found)");
    }
}
