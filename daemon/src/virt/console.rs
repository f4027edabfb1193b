//! An async client for a guest's shell on its serial console, the Unix socket libvirt
//! binds for `<serial type='unix'>` (see [`super::VmSpec::console_socket`]). Tests and
//! the daemon use it to wait for a booted or resumed guest and to run commands in it
//! without any network.
//!
//! Protocol, given how the tty behaves:
//! - The tty echoes what we type, so [`Console::run`] sends *one* line whose begin/end
//!   markers are quoted (`echo '__BEGIN_x'`): the echoed line never has a marker at the
//!   start of a line followed by a newline, only the shell's output does. Typed-ahead
//!   input would be echoed into the previous command's output, hence one line per call.
//! - QEMU drops serial output while no client is connected, so a boot marker printed
//!   before [`Console::connect`] is lost: [`Console::wait_for_line`] makes the shell print
//!   it again after half its timeout (spelled in two pieces so that its echo is no match).
//! - Output comes with CRLF line ends (`onlcr`); carriage returns are dropped.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::{sleep, timeout_at, Instant};

use super::VirtError;

/// Most bytes buffered while waiting for one reply or line.
pub const MAX_REPLY_BYTES: usize = 16 << 20;
/// Bytes of recent console output kept for diagnostics ([`Console::recent_output`]).
const TRANSCRIPT_BYTES: usize = 8 << 10;
/// Pause between connection attempts while the socket does not exist yet.
const CONNECT_RETRY: Duration = Duration::from_millis(50);
/// Pause between probes once the marker was not seen in the first half of the wait.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Longest single `echo ok` attempt of [`Console::wait_ready`].
const READY_ATTEMPT: Duration = Duration::from_secs(3);

/// Distinguishes the markers of every command this process runs, across consoles.
static COMMANDS: AtomicU64 = AtomicU64::new(0);

/// The output and exit status of a command run in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// What the command printed (stdout and stderr, which the guest shell merges), with
    /// line ends as `\n`.
    pub output: String,
    /// Its exit status (`$?`).
    pub status: i32,
}

/// A connected guest console.
#[derive(Debug)]
pub struct Console {
    stream: UnixStream,
    /// Bytes read and not consumed yet.
    buf: Vec<u8>,
    /// The last bytes read, for error reports.
    transcript: Vec<u8>,
}

impl Console {
    /// Connects to the console socket at `path`, retrying while it does not exist or
    /// refuses (libvirt creates it a moment after the domain starts).
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, VirtError> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path).await {
                Ok(stream) => {
                    return Ok(Self {
                        stream,
                        buf: Vec::new(),
                        transcript: Vec::new(),
                    })
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return Err(VirtError::Timeout("the console socket"));
                    }
                    sleep(CONNECT_RETRY).await;
                }
                Err(e) => return Err(VirtError::Io(e)),
            }
        }
    }

    /// Waits for a line equal to `marker` (e.g. the guest's ready line at boot). If none
    /// came in the first half of `timeout`, asks the shell to print it, every 2 s.
    pub async fn wait_for_line(
        &mut self,
        marker: &str,
        timeout: Duration,
    ) -> Result<(), VirtError> {
        check_one_line(marker)?;
        let start = Instant::now();
        let deadline = start + timeout;
        let mut probe_at = start + timeout / 2;
        loop {
            while let Some(newline) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=newline).collect();
                let line = String::from_utf8_lossy(&line);
                if line.trim_end_matches(['\r', '\n']) == marker {
                    return Ok(());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(VirtError::Timeout("the console marker line"));
            }
            if now >= probe_at {
                self.send(&probe_line(marker), deadline).await?;
                probe_at = now + PROBE_INTERVAL;
            }
            self.read_more(probe_at.min(deadline)).await?;
        }
    }

    /// Waits until the shell answers `echo ok` (after a restore: the guest is resumed
    /// where it was, at its prompt, and prints nothing by itself).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), VirtError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VirtError::Timeout("the guest shell"));
            }
            match self.run("echo ok", left.min(READY_ATTEMPT)).await {
                Ok(reply) if reply.status == 0 && reply.output.trim() == "ok" => return Ok(()),
                Ok(_) | Err(VirtError::Timeout(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs the one-line shell `command` in the guest and returns its output and status.
    /// The command may end in `&` (it is `eval`ed); it must not contain a line break.
    pub async fn run(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, VirtError> {
        check_one_line(command)?;
        let deadline = Instant::now() + timeout;
        let n = COMMANDS.fetch_add(1, Ordering::Relaxed);
        let token = format!("{:x}x{n:x}", std::process::id());
        let begin = format!("__BEGIN_{token}");
        let end = format!("__END_{token}");
        // The leading newline ends whatever a previous probe or timed-out command left
        // half typed.
        let line = format!(
            "\necho '{begin}'; eval {}; __rc=$?; printf '\\n%s %s\\n' '{end}' \"$__rc\"\n",
            shell_quote(command)
        );
        self.buf.clear();
        self.send(&line, deadline).await?;
        // Parse the whole reply only once a complete end line arrived: replies can be long.
        let end_line = format!("\n{end} ");
        let mut search_from = 0usize;
        loop {
            match find(&self.buf, end_line.as_bytes(), search_from) {
                Some(at) if self.buf[at + end_line.len()..].contains(&b'\n') => {
                    let text = String::from_utf8_lossy(&self.buf).replace('\r', "");
                    if let Some(reply) = parse_reply(&text, &begin, &end) {
                        self.buf.clear();
                        return Ok(reply);
                    }
                    // An end line without a begin line before it (a wrapped echo): go on.
                    search_from = at + 1;
                    continue;
                }
                // Incomplete end line: look here again once more bytes arrived.
                Some(at) => search_from = at,
                None => {
                    search_from = self.buf.len().saturating_sub(end_line.len());
                }
            }
            if !self.read_more(deadline).await? {
                return Err(VirtError::Timeout("a guest command to finish"));
            }
        }
    }

    /// The last few KiB the guest printed, for error reports.
    pub fn recent_output(&self) -> String {
        String::from_utf8_lossy(&self.transcript).replace('\r', "")
    }

    async fn send(&mut self, text: &str, deadline: Instant) -> Result<(), VirtError> {
        match timeout_at(deadline, self.stream.write_all(text.as_bytes())).await {
            Ok(result) => result.map_err(VirtError::Io),
            Err(_) => Err(VirtError::Timeout("the console to accept input")),
        }
    }

    /// Reads what arrives before `until`: `false` if nothing did.
    async fn read_more(&mut self, until: Instant) -> Result<bool, VirtError> {
        if self.buf.len() > MAX_REPLY_BYTES {
            return Err(VirtError::Console(format!(
                "more than {MAX_REPLY_BYTES} bytes without the awaited reply"
            )));
        }
        let mut chunk = [0u8; 16 << 10];
        match timeout_at(until, self.stream.read(&mut chunk)).await {
            Err(_) => Ok(false),
            Ok(Err(e)) => Err(VirtError::Io(e)),
            Ok(Ok(0)) => Err(VirtError::Console("the guest closed its console".into())),
            Ok(Ok(n)) => {
                let data = chunk.get(..n).unwrap_or_default();
                self.buf.extend_from_slice(data);
                self.transcript.extend_from_slice(data);
                let excess = self.transcript.len().saturating_sub(TRANSCRIPT_BYTES);
                self.transcript.drain(..excess);
                Ok(true)
            }
        }
    }
}

fn check_one_line(text: &str) -> Result<(), VirtError> {
    if text.contains(['\n', '\r', '\0']) {
        return Err(VirtError::InvalidArgument(
            "a console command or marker must be one line".into(),
        ));
    }
    Ok(())
}

/// `'...'` for the shell, single quotes inside written as `'\''`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A command line printing `marker` in two pieces, so that its echo never equals it.
fn probe_line(marker: &str) -> String {
    let mid = marker
        .char_indices()
        .map(|(i, _)| i)
        .nth(marker.chars().count() / 2)
        .unwrap_or(0);
    let (a, b) = marker.split_at(mid);
    format!("\nprintf '%s%s\\n' {} {}\n", shell_quote(a), shell_quote(b))
}

/// Position of the first `needle` in `haystack` at or after `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Finds `<begin>\n<output>\n<end> <status>\n` in `text`, begin and end each at the start
/// of a line, and returns the output exactly as printed.
fn parse_reply(text: &str, begin: &str, end: &str) -> Option<CommandOutput> {
    let begin_line = format!("{begin}\n");
    let body_start = text
        .match_indices(&begin_line)
        .find(|&(i, _)| i == 0 || text[..i].ends_with('\n'))?
        .0
        + begin_line.len();
    let body = &text[body_start..];
    let end_line = format!("\n{end} ");
    let (end_at, _) = body.match_indices(&end_line).next()?;
    let status_text = &body[end_at + end_line.len()..];
    let status_len = status_text.find('\n')?;
    let status = status_text[..status_len].trim().parse().ok()?;
    Some(CommandOutput {
        output: body[..end_at].to_string(),
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECHO: &str =
        "# echo '__BEGIN_1'; eval 'ls'; __rc=$?; printf '\\n%s %s\\n' '__END_1' \"$__rc\"\n";

    fn reply(output: &str, status: i32) -> Option<CommandOutput> {
        Some(CommandOutput {
            output: output.into(),
            status,
        })
    }

    #[test]
    fn replies_are_found_and_the_echo_is_not_one() {
        let (b, e) = ("__BEGIN_1", "__END_1");
        assert_eq!(parse_reply(ECHO, b, e), None);
        let full = format!("{ECHO}__BEGIN_1\na\nb\n\n__END_1 0\n# ");
        assert_eq!(parse_reply(&full, b, e), reply("a\nb\n", 0));
        let no_newline = format!("{ECHO}__BEGIN_1\nab\n__END_1 1\n");
        assert_eq!(parse_reply(&no_newline, b, e), reply("ab", 1));
        let empty = format!("{ECHO}__BEGIN_1\n\n__END_1 127\n");
        assert_eq!(parse_reply(&empty, b, e), reply("", 127));
        let partial = format!("{ECHO}__BEGIN_1\nx\n__END_1 0");
        assert_eq!(parse_reply(&partial, b, e), None, "status line incomplete");
        // A wrapped echo that puts a marker at a line start is still no reply.
        let wrapped =
            "# echo '\n__BEGIN_1'; eval 'ls'; printf '\\n%s %s\\n' '\n__END_1' \"$__rc\"\n";
        assert_eq!(parse_reply(wrapped, b, e), None);
    }

    #[test]
    fn find_starts_where_asked() {
        assert_eq!(find(b"abcabc", b"bc", 0), Some(1));
        assert_eq!(find(b"abcabc", b"bc", 2), Some(4));
        assert_eq!(find(b"abc", b"bc", 9), None);
        assert_eq!(find(b"abc", b"", 0), None);
    }

    #[test]
    fn quoting_and_probes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(
            probe_line("CLOUDLET-GUEST-READY"),
            "\nprintf '%s%s\\n' 'CLOUDLET-G' 'UEST-READY'\n"
        );
        assert_eq!(probe_line("x"), "\nprintf '%s%s\\n' '' 'x'\n");
        assert!(!probe_line("ééé").is_empty());
        assert!(check_one_line("a\nb").is_err());
        assert!(check_one_line("sleep 1 &").is_ok());
    }

    /// A fake guest: a shell-like peer on a socket pair that answers like the fixture's.
    #[tokio::test]
    async fn talks_to_a_fake_shell() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let guest = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"[    0.5] boot noise\r\nCLOUDLET-GUEST-READY\r\n")
                .await
                .unwrap();
            let mut input = Vec::new();
            let mut chunk = [0u8; 4096];
            // Two commands: echo them like a tty, then answer.
            for _ in 0..2 {
                loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    input.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&input).to_string();
                    if text.matches("__END_").count() == 1 && text.ends_with('\n') {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&input).to_string();
                input.clear();
                let line = text.trim_start_matches('\n').trim_end().to_string();
                let tok = |p: &str| {
                    let i = line.find(p).unwrap();
                    line[i..].split('\'').next().unwrap().to_string()
                };
                let (b, e) = (tok("__BEGIN_"), tok("__END_"));
                let (out, rc) = if line.contains("false") {
                    ("", 1)
                } else {
                    ("ok\r\n", 0)
                };
                let answer = format!("# {line}\r\n{b}\r\n{out}\r\n{e} {rc}\r\n# ");
                // In small pieces, as a serial line delivers it: the end line arrives split.
                for piece in answer.as_bytes().chunks(5) {
                    s.write_all(piece).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        let mut con = Console::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        con.wait_for_line("CLOUDLET-GUEST-READY", Duration::from_secs(5))
            .await
            .unwrap();
        let ok = con.run("echo ok", Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            ok,
            CommandOutput {
                output: "ok\n".into(),
                status: 0
            }
        );
        let failed = con.run("false", Duration::from_secs(5)).await.unwrap();
        assert_eq!(failed.status, 1);
        assert!(con.recent_output().contains("boot noise"));
        guest.await.unwrap();
        // The peer is gone: the next wait reports a closed console.
        let err = con
            .wait_for_line("never", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, VirtError::Console(_)), "{err:?}");
    }

    #[tokio::test]
    async fn connect_times_out_without_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let err = Console::connect(&dir.path().join("none"), Duration::from_millis(120))
            .await
            .unwrap_err();
        assert!(matches!(err, VirtError::Timeout(_)), "{err:?}");
    }
}
