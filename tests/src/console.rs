//! A client for the fixture guest's shell on its serial console (a Unix socket).
//!
//! The tty echoes what we type, so commands are sent as one line whose begin/end markers
//! are quoted: the echo of the line can never match the unquoted markers the shell prints.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Line the fixture guest prints when its shell is ready.
pub const READY_MARKER: &str = "CLOUDLET-GUEST-READY";

/// A connected console.
pub struct Console {
    stream: UnixStream,
    buf: Vec<u8>,
    counter: u64,
}

impl Console {
    /// Connects, retrying while the socket does not exist yet.
    pub fn connect(path: &Path, timeout: Duration) -> anyhow::Result<Self> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => {
                    return Ok(Self {
                        stream,
                        buf: Vec::new(),
                        counter: 0,
                    })
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("connecting to console {}", path.display()))
                }
            }
        }
    }

    fn read_more(&mut self, deadline: Instant) -> anyhow::Result<bool> {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        self.stream
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(10))))?;
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => bail!("the guest closed its console"),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(true)
            }
            Err(e) => Err(e).context("reading the console"),
        }
    }

    /// Runs one shell command line in the guest; returns (output, exit status).
    pub fn run(&mut self, command: &str, timeout: Duration) -> anyhow::Result<(String, i32)> {
        self.counter += 1;
        let token = format!("{:x}{:x}", std::process::id(), self.counter);
        let begin = format!("__BEGIN_{token}");
        let end = format!("__END_{token}");
        let quoted = command.replace('\'', r"'\''");
        let line = format!(
            "\necho '{begin}'; eval '{quoted}'; __rc=$?; printf '\\n%s %s\\n' '{end}' \"$__rc\"\n"
        );
        self.stream
            .write_all(line.as_bytes())
            .context("writing to the console")?;
        let deadline = Instant::now() + timeout;
        loop {
            let text = String::from_utf8_lossy(&self.buf).replace('\r', "");
            if let Some(found) = parse_reply(&text, &begin, &end) {
                self.buf.clear();
                return Ok(found);
            }
            if !self.read_more(deadline)? {
                bail!("command did not finish within {timeout:?}: {command}");
            }
        }
    }

    /// Runs a command that must succeed; returns its output, trimmed.
    pub fn check(&mut self, command: &str, timeout: Duration) -> anyhow::Result<String> {
        let (out, status) = self.run(command, timeout)?;
        if status != 0 {
            bail!("guest command failed with status {status}: {command}\n{out}");
        }
        Ok(out.trim().to_string())
    }

    /// Waits until the guest shell answers (after boot or restore).
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(3));
            if let Ok((out, 0)) = self.run("echo ok", left) {
                if out.trim() == "ok" {
                    return Ok(());
                }
            }
        }
        bail!("guest shell did not answer within {timeout:?}")
    }
}

/// Finds `begin\n<output>\n<end> <status>\n` as lines of `text`.
fn parse_reply(text: &str, begin: &str, end: &str) -> Option<(String, i32)> {
    let start = text
        .match_indices(begin)
        .find(|(i, _)| *i == 0 || text.as_bytes()[i - 1] == b'\n')?
        .0;
    let after = &text[start + begin.len()..];
    let after = after.strip_prefix('\n')?;
    let end_at = after
        .match_indices(end)
        .find(|(i, _)| *i > 0 && after.as_bytes()[i - 1] == b'\n')?
        .0;
    let status_line = after[end_at + end.len()..].split('\n').next()?;
    if !after[end_at + end.len()..].contains('\n') {
        return None;
    }
    let status = status_line.trim().parse().ok()?;
    Some((after[..end_at - 1].to_string(), status))
}

#[cfg(test)]
mod tests {
    use super::parse_reply;

    #[test]
    fn replies_are_found_and_echo_is_ignored() {
        let b = "__BEGIN_1";
        let e = "__END_1";
        let echo =
            "# echo '__BEGIN_1'; eval 'ls'; __rc=$?; printf '\\n%s %s\\n' '__END_1' \"$__rc\"\n";
        assert_eq!(parse_reply(echo, b, e), None);
        let full = format!("{echo}__BEGIN_1\na\nb\n__END_1 0\n");
        assert_eq!(parse_reply(&full, b, e), Some(("a\nb".into(), 0)));
        let empty = format!("{echo}__BEGIN_1\n\n__END_1 3\n");
        assert_eq!(parse_reply(&empty, b, e), Some(("".into(), 3)));
        assert_eq!(
            parse_reply(&format!("{echo}__BEGIN_1\nx\n__END_1 0"), b, e),
            None,
            "status line incomplete"
        );
    }
}
