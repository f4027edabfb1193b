//! What a connection answers before the router sees a request. hyper refuses a request
//! head it cannot parse by itself (400: a bad method, URI, version or header, a bad or
//! conflicting `Content-Length`; 414: a URI over 65,534 bytes; 431: over
//! [`MAX_HEADERS`] headers or a head over [`MAX_HEAD_BYTES`]) and writes that answer with
//! an empty body; no hook of hyper 1.x changes it. [`JsonHeadErrors`] wraps the
//! connection's writes and gives exactly those answers the API's JSON error body, so that
//! every non-2xx answer a client sees is `{"error":{"code","message"}}`.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use cloudlet_api::{ErrorBody, ErrorCode, ErrorDetail};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most headers a request may carry (hyper's default, set explicitly).
pub const MAX_HEADERS: usize = 100;
/// Most bytes a request head may take: hyper's read buffer cap, which bounds it (hyper's
/// default, set explicitly; it must stay above the 65,534-byte URI limit for 414 to be
/// reachable).
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// The JSON answer for hyper's own answer `head`, if `head` is one: a whole response head
/// with status 400, 414 or 431, `content-length: 0` and no content type. The router never
/// answers like that (its errors all carry a JSON body), so nothing else is rewritten.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    // Every write passes here (downloads too): cheap checks before any parsing.
    if head.len() > 1024 || !head.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let rest = text.strip_prefix("HTTP/1.1 ")?;
    let (code, message) = match rest.get(..3)? {
        "400" => (
            ErrorCode::InvalidRequest,
            "the request head does not parse (method, URI, version or a header; a \
             Content-Length must be one decimal number, and given twice, the same)"
                .to_string(),
        ),
        "414" => (
            ErrorCode::UriTooLong,
            "the request URI is longer than 65534 bytes".to_string(),
        ),
        "431" => (
            ErrorCode::HeadersTooLarge,
            format!(
                "the request head has more than {MAX_HEADERS} headers or more than \
                 {MAX_HEAD_BYTES} bytes"
            ),
        ),
        _ => return None,
    };
    let lines = text.strip_suffix("\r\n\r\n")?;
    if lines.contains("\r\n\r\n") {
        return None;
    }
    let mut empty = false;
    let mut out = String::new();
    for line in lines.split("\r\n") {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("content-type:") {
            return None;
        }
        if lower.replace(' ', "") == "content-length:0" {
            empty = true;
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    if !empty {
        return None;
    }
    let body = serde_json::to_string(&ErrorBody {
        error: ErrorDetail {
            code,
            message,
            request_id: None,
        },
    })
    .ok()?;
    out.push_str("content-type: application/json\r\n");
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    out.push_str(&body);
    Some(out.into_bytes())
}

/// A connection whose hyper-written parse-error answers get a JSON body (module doc).
pub struct JsonHeadErrors<T> {
    inner: T,
    /// A rewritten answer hyper was told is written, and how much of it is.
    pending: Vec<u8>,
    written: usize,
}

impl<T> JsonHeadErrors<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> JsonHeadErrors<T> {
    /// Writes what is left of a rewritten answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.pending.get(self.written..).filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `head` over as its JSON rewrite; `None` if it is not hyper's own answer.
    fn poll_rewrite(
        &mut self,
        cx: &mut Context<'_>,
        head: &[u8],
    ) -> Option<Poll<io::Result<usize>>> {
        let json = rewrite(head)?;
        self.pending = json;
        self.written = 0;
        // hyper is told the whole head is written; the rest goes out before anything
        // else (every write, flush and shutdown first drains it).
        Some(match self.poll_pending(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(head.len())),
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonHeadErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonHeadErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some(done) = this.poll_rewrite(cx, buf) {
            return done;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        // hyper's own answer is a head alone: one buffer.
        if let [head] = bufs {
            if let Some(done) = this.poll_rewrite(cx, head) {
                return done;
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_empty_error_heads_are_rewritten() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
            date: Tue, 01 Dec 2026 08:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(head).expect("rewritten")).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let parsed: ErrorBody = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.error.code, ErrorCode::HeadersTooLarge);
        assert_eq!(parsed.error.code.status(), 431);

        for other in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Req",
        ] {
            assert!(rewrite(other).is_none(), "{}", String::from_utf8_lossy(other));
        }
    }

    #[tokio::test]
    async fn a_rewritten_answer_reaches_the_peer_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(16);
        let mut conn = JsonHeadErrors::new(server);
        let writer = tokio::spawn(async move {
            conn.write_all(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            conn.shutdown().await.unwrap();
        });
        let mut got = String::new();
        let mut client = client;
        client.read_to_string(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(got.starts_with("HTTP/1.1 414 "), "{got}");
        assert!(got.ends_with("\"}}"), "{got}");
        assert!(got.contains("uri-too-long"), "{got}");
    }
}
