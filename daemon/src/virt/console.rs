//! An async client for a guest's shell on its serial console, the Unix socket libvirt
//! binds for `<serial type='unix'>` (see [`super::VmSpec::console_socket`]). Tests and
//! the daemon use it to wait for a booted or resumed guest and to run commands and whole
//! scripts in it without any network.
//!
//! Protocol, given how the tty behaves:
//! - Everything read passes through [`TermFilter`] first: it drops terminal escape
//!   sequences (CSI such as bash's bracketed-paste `ESC[?2004h`/`ESC[?2004l`, colours and
//!   cursor moves, OSC window titles, DCS/APC strings, two-byte `ESC x`), carriage returns
//!   and BEL, also when a sequence is split across reads. Matching, command output and
//!   error reports all see the filtered text, so a stock bash (whose output lines start
//!   with `ESC[?2004l CR`), a coloured prompt and `\r\n` line ends look like busybox `sh`.
//!   No shell setting is changed.
//! - The tty echoes what we type, so [`Console::run`] sends *one* line whose begin/end
//!   markers are quoted (`echo '__BEGIN_x'`): the echoed line never has a marker at the
//!   start of a line followed by a newline, only the shell's output does. Typed-ahead
//!   input would be echoed into the previous command's output, hence one line per call.
//!   Anything printed before the command (a late login banner) is discarded with the
//!   echo; the reply is what lies between the begin and end lines.
//! - QEMU drops serial output while no client is connected, so a boot marker printed
//!   before [`Console::connect`] is lost: [`Console::wait_for_line`] makes the shell print
//!   it again after half its timeout (spelled in two pieces so that its echo is no match).
//! - [`Console::run_script`] uploads a multi-line script base64-encoded, in lines short
//!   enough for any shell's line editor, to a file in the guest's `/tmp`, decodes it with
//!   `base64 -d` and runs it with the interpreter its `#!` line names (default `sh`),
//!   stdin from `/dev/null`.
//! - Every timeout is a [`VirtError::ConsoleTimeout`] that quotes the last filtered output
//!   (or says there was none; for a boot marker, with the domain type).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::{sleep, timeout_at, Instant};

use super::{DomainType, VirtError};

/// Most bytes buffered while waiting for one reply or line.
pub const MAX_REPLY_BYTES: usize = 16 << 20;
/// Bytes of recent console output kept for diagnostics ([`Console::recent_output`]).
const TRANSCRIPT_BYTES: usize = 8 << 10;
/// Characters of recent output a timeout error quotes.
const ERROR_TAIL_CHARS: usize = 200;
/// Pause between connection attempts while the socket does not exist yet.
const CONNECT_RETRY: Duration = Duration::from_millis(50);
/// Pause between probes once the marker was not seen in the first half of the wait.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Longest single `echo ok` attempt of [`Console::wait_ready`].
const READY_ATTEMPT: Duration = Duration::from_secs(3);
/// Base64 characters per upload line of [`Console::run_script`]: with the command around
/// them a line stays under 1 KiB, busybox's default line-editing limit (and far under the
/// tty's 4 KiB canonical-mode limit).
const SCRIPT_CHUNK: usize = 640;

/// Distinguishes the markers of every command this process runs, across consoles.
static COMMANDS: AtomicU64 = AtomicU64::new(0);

/// The output and exit status of a command run in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// What the command printed (stdout and stderr, which the guest shell merges), with
    /// line ends as `\n` and terminal escape sequences removed (see [`TermFilter`]).
    pub output: String,
    /// Its exit status (`$?`).
    pub status: i32,
}

/// A connected guest console.
#[derive(Debug)]
pub struct Console {
    stream: UnixStream,
    /// Filtered bytes read and not consumed yet.
    buf: Vec<u8>,
    /// The last filtered bytes read, for error reports.
    transcript: Vec<u8>,
    /// Removes escape sequences and CRs from what is read.
    filter: TermFilter,
    /// Raw bytes read since the connection was made.
    received: u64,
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
                        filter: TermFilter::default(),
                        received: 0,
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

    /// Waits for a line equal to `marker` (e.g. the guest's ready line at boot), escape
    /// sequences and surrounding blanks aside. If none came in the first half of
    /// `timeout`, asks the shell to print it, every 2 s.
    pub async fn wait_for_line(
        &mut self,
        marker: &str,
        timeout: Duration,
    ) -> Result<(), VirtError> {
        self.wait_for_marker(marker, timeout, None).await
    }

    /// [`Self::wait_for_line`] for a guest that was just started with `domain_type`: if
    /// the console stays silent for the whole wait, the error names the domain type (a
    /// `kvm` guest on a host without usable hardware virtualization prints nothing).
    pub async fn wait_for_boot_marker(
        &mut self,
        marker: &str,
        timeout: Duration,
        domain_type: DomainType,
    ) -> Result<(), VirtError> {
        self.wait_for_marker(marker, timeout, Some(domain_type))
            .await
    }

    async fn wait_for_marker(
        &mut self,
        marker: &str,
        timeout: Duration,
        domain_type: Option<DomainType>,
    ) -> Result<(), VirtError> {
        check_one_line(marker)?;
        if marker.trim().is_empty() {
            return Err(VirtError::InvalidArgument("an empty console marker".into()));
        }
        let start = Instant::now();
        let received_before = self.received;
        let deadline = start + timeout;
        let mut probe_at = start + timeout / 2;
        loop {
            while let Some(newline) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=newline).collect();
                if String::from_utf8_lossy(&line).trim() == marker.trim() {
                    return Ok(());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let what = format!("the console marker line `{marker}` ({})", secs(timeout));
                if self.received == received_before {
                    return Err(VirtError::ConsoleTimeout {
                        what,
                        detail: silence_detail(timeout, domain_type),
                    });
                }
                return Err(self.timeout_error(what));
            }
            if now >= probe_at {
                self.send(&probe_line(marker), deadline).await?;
                probe_at = now + PROBE_INTERVAL;
            }
            self.read_more(probe_at.min(deadline)).await?;
        }
    }

    /// Waits until the shell answers `echo ok` (after a restore: the guest is resumed
    /// where it was, at its prompt, and prints nothing by itself; a getty that restarts
    /// or a late banner only delays the answer).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), VirtError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timeout_error(format!(
                    "the guest shell to answer `echo ok` ({})",
                    secs(timeout)
                )));
            }
            match self.run("echo ok", left.min(READY_ATTEMPT)).await {
                Ok(reply) if reply.status == 0 && reply.output.trim() == "ok" => return Ok(()),
                Ok(_) | Err(VirtError::ConsoleTimeout { .. }) => {}
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
        let token = new_token();
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
                    let text = String::from_utf8_lossy(&self.buf);
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
                return Err(self.timeout_error(format!(
                    "a guest command to finish ({}): {}",
                    secs(timeout),
                    shorten(command, 80)
                )));
            }
        }
    }

    /// Runs a whole (multi-line) `script` in the guest as one unit and returns its
    /// combined output and exit status. The script is uploaded base64-encoded to
    /// `/tmp/cloudlet-script-<id>` (mode 0600, created with `/tmp` if missing), decoded
    /// with the guest's `base64 -d` and run in the shell's current directory with the
    /// interpreter of its `#!` line (`sh` without one), stdin from `/dev/null`; the file is
    /// removed afterwards. `timeout` covers the upload and the run. An upload step that
    /// fails (no `base64`, full disk) is a [`VirtError::Console`] error.
    pub async fn run_script(
        &mut self,
        script: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, VirtError> {
        if script.contains('\0') {
            return Err(VirtError::InvalidArgument(
                "a script must not contain NUL bytes".into(),
            ));
        }
        let deadline = Instant::now() + timeout;
        let plan = ScriptPlan::new(script, &format!("/tmp/cloudlet-script-{}", new_token()));
        for step in &plan.upload {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self.run(step, left).await?;
            if reply.status != 0 {
                return Err(VirtError::Console(format!(
                    "uploading the script failed at `{}` (status {}): {}",
                    shorten(step, 80),
                    reply.status,
                    reply.output.trim()
                )));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.run(&plan.run, left).await
    }

    /// The last few KiB the guest printed (escape sequences and CRs removed), for error
    /// reports.
    pub fn recent_output(&self) -> String {
        String::from_utf8_lossy(&self.transcript).into_owned()
    }

    /// A [`VirtError::ConsoleTimeout`] for `what`, quoting the console's last output.
    fn timeout_error(&self, what: String) -> VirtError {
        VirtError::ConsoleTimeout {
            what,
            detail: shown_detail(&self.transcript),
        }
    }

    async fn send(&mut self, text: &str, deadline: Instant) -> Result<(), VirtError> {
        match timeout_at(deadline, self.stream.write_all(text.as_bytes())).await {
            Ok(result) => result.map_err(VirtError::Io),
            Err(_) => Err(self.timeout_error("the console to accept input".into())),
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
                self.received += n as u64;
                let kept = self.buf.len();
                self.filter.feed(data, &mut self.buf);
                self.transcript.extend_from_slice(&self.buf[kept..]);
                let excess = self.transcript.len().saturating_sub(TRANSCRIPT_BYTES);
                self.transcript.drain(..excess);
                Ok(true)
            }
        }
    }
}

/// Removes terminal control sequences from a byte stream, keeping its text and `\n`
/// (and tabs, backspaces and UTF-8 as they are). State carries over between
/// [`Self::feed`] calls, so a sequence split across reads is removed whole. Dropped:
/// CSI (`ESC [` … final byte), OSC/DCS/SOS/PM/APC strings (up to BEL or `ESC \`; a
/// newline, CAN or SUB ends one early so that a broken sequence cannot swallow the
/// output), other `ESC` sequences (intermediates + final byte), CR, BEL, NUL, SO and SI.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TermFilter {
    state: FilterState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum FilterState {
    #[default]
    Text,
    /// After `ESC`.
    Escape,
    /// After `ESC` and intermediate bytes (`ESC ( B`).
    Intermediate,
    /// Inside `ESC [`.
    Csi,
    /// Inside an OSC/DCS/SOS/PM/APC string.
    Control,
    /// After `ESC` inside such a string (`ESC \` ends it).
    ControlEscape,
}

impl TermFilter {
    /// Appends the text of `input` to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.step(b, out);
        }
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) {
        use FilterState::*;
        const ESC: u8 = 0x1b;
        self.state = match (self.state, b) {
            (Text, ESC) => Escape,
            (Text, b'\r' | 0x07 | 0x00 | 0x0e | 0x0f) => Text,
            (Text, _) => {
                out.push(b);
                Text
            }
            (Escape, b'[') => Csi,
            (Escape, b']' | b'P' | b'X' | b'^' | b'_') => Control,
            (Escape | Intermediate, 0x20..=0x2f) => Intermediate,
            (Escape | Intermediate | Csi, ESC) => Escape,
            // A final byte ends the sequence; a control character aborts it and counts as
            // text (a stray ESC before a newline must not eat the newline).
            (Escape | Intermediate, 0x30..=0x7e) | (Csi, 0x40..=0x7e) => Text,
            (Csi, 0x20..=0x3f) => Csi,
            (Escape | Intermediate | Csi, _) => {
                self.state = Text;
                return self.step(b, out);
            }
            (Control, 0x07) => Text,
            (Control, ESC) => ControlEscape,
            (Control, b'\n' | 0x18 | 0x1a) => {
                self.state = Text;
                return self.step(b, out);
            }
            (Control, _) => Control,
            (ControlEscape, b'\\') => Text,
            // Any other ESC sequence also ends the string, and begins itself.
            (ControlEscape, _) => {
                self.state = Escape;
                return self.step(b, out);
            }
        };
    }
}

/// What a [`Console::run_script`] sends: the upload commands, then the one that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ScriptPlan {
    upload: Vec<String>,
    run: String,
}

impl ScriptPlan {
    /// The commands that put `script` at `path` in the guest and run it there.
    fn new(script: &str, path: &str) -> Self {
        let file = shell_quote(path);
        let encoded_file = shell_quote(&format!("{path}.b64"));
        let mut upload = vec![format!("mkdir -p /tmp && (umask 077 && : >{encoded_file})")];
        let encoded = base64_encode(script.as_bytes());
        // Base64 is ASCII: every chunk boundary is a char boundary.
        let mut rest = encoded.as_str();
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(SCRIPT_CHUNK));
            upload.push(format!("printf %s '{chunk}' >>{encoded_file}"));
            rest = tail;
        }
        upload.push(format!(
            "(umask 077 && base64 -d {encoded_file} >{file}) && rm -f {encoded_file}"
        ));
        let interpreter: Vec<String> = script_interpreter(script)
            .iter()
            .map(|word| shell_quote(word))
            .collect();
        let run = format!(
            "{} {file} </dev/null; __s=$?; rm -f {file}; (exit $__s)",
            interpreter.join(" ")
        );
        Self { upload, run }
    }
}

/// The interpreter and its optional argument from the script's `#!` line, split as the
/// kernel does (the path, then the rest of the line as one argument); `sh` without one.
fn script_interpreter(script: &str) -> Vec<String> {
    let Some(rest) = script.strip_prefix("#!") else {
        return vec!["sh".into()];
    };
    let line = rest.lines().next().unwrap_or_default().trim();
    match line.split_once([' ', '\t']) {
        _ if line.is_empty() => vec!["sh".into()],
        None => vec![line.into()],
        Some((path, arg)) if arg.trim().is_empty() => vec![path.into()],
        Some((path, arg)) => vec![path.into(), arg.trim().into()],
    }
}

/// Standard base64 (RFC 4648, with padding), as `base64 -d` reads it.
fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let bytes = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A fresh token for markers and file names, unique across consoles of this process.
fn new_token() -> String {
    let n = COMMANDS.fetch_add(1, Ordering::Relaxed);
    format!("{:x}x{n:x}", std::process::id())
}

/// `180 s`, `0.5 s`: a wait's length for messages.
fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// `text`, cut to `max` characters with `…` where cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// What a timeout error says about the console's (filtered) output: its last
/// [`ERROR_TAIL_CHARS`] characters, quoted with control characters escaped.
fn shown_detail(transcript: &[u8]) -> String {
    let text = String::from_utf8_lossy(transcript);
    let text = text.trim_end();
    if text.is_empty() {
        return "the console showed nothing".into();
    }
    let chars = text.chars().count();
    let tail: String = text
        .chars()
        .skip(chars.saturating_sub(ERROR_TAIL_CHARS))
        .collect();
    let cut = if chars > ERROR_TAIL_CHARS { "…" } else { "" };
    format!("the console showed last: {cut}{tail:?}")
}

/// What a marker timeout says when the console printed nothing during the wait.
fn silence_detail(timeout: Duration, domain_type: Option<DomainType>) -> String {
    let hint = match domain_type {
        Some(DomainType::Kvm) => {
            "domain type kvm: does this host's CPU support it (vmx/svm in /proc/cpuinfo)? \
             see the domain_type setting"
        }
        Some(DomainType::Qemu) => {
            "domain type qemu: does the guest put its console on ttyS0 (console=ttyS0)?"
        }
        None => "does the guest put its console on ttyS0 (console=ttyS0)?",
    };
    format!(
        "the guest printed nothing on its serial console in {} ({hint})",
        secs(timeout)
    )
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

    const PROMPT: &str = "\x1b[?2004h\x1b]0;root@guest: ~\x07\x1b[01;32mroot@guest\x1b[00m:~# ";

    /// What bash 5 on a serial console prints for `echo hello-$((1+2))` (see the module
    /// doc), and what the filter keeps of it.
    const BASH_RAW: &[u8] = b"\x1b[?2004hroot@cloudlet-guest:~# echo hello-$((1+2))\r\n\
        \x1b[?2004l\rhello-3\r\n\x1b[?2004hroot@cloudlet-guest:~# ";
    const BASH_TEXT: &str =
        "root@cloudlet-guest:~# echo hello-$((1+2))\nhello-3\nroot@cloudlet-guest:~# ";

    fn filtered(input: &[u8]) -> String {
        let mut out = Vec::new();
        TermFilter::default().feed(input, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_filter_keeps_the_text_of_a_bash_session() {
        assert_eq!(filtered(BASH_RAW), BASH_TEXT);
        assert_eq!(filtered(b"a\r\nb\r\r\n"), "a\nb\n");
        // Coloured prompt, window title (BEL and ST ends), charset and keypad sequences.
        assert_eq!(filtered(PROMPT.as_bytes()), "root@guest:~# ");
        assert_eq!(
            filtered(b"\x1b]2;title\x1b\\x\x1b(B\x1b=\x1b>\x1b7y\x1b[1;31mred\x1b[m\x07\n"),
            "xyred\n"
        );
        // DCS and APC strings, cursor moves with intermediates, 8-bit text kept.
        assert_eq!(
            filtered("\x1bPq#0\x1b\\\x1b_apc\x07é\x1b[2 q\x1b[K\x1b[10;1H\tz".as_bytes()),
            "é\tz"
        );
        // Broken sequences do not swallow lines: a stray ESC or an unterminated OSC end at
        // the next control character, which is kept.
        assert_eq!(filtered(b"a\x1b\nb\x1b[12\nc\x1b]0;t\nd"), "a\nb\nc\nd");
        // A CSI ended by an ESC begins the next sequence.
        assert_eq!(filtered(b"\x1b[1\x1b[0mok"), "ok");
    }

    #[test]
    fn sequences_split_across_reads_are_removed_whole() {
        let raw = [BASH_RAW, PROMPT.as_bytes(), b"\x1b]0;t\x1b\\end\r\n"].concat();
        let whole = filtered(&raw);
        for cut in 0..raw.len() {
            let mut filter = TermFilter::default();
            let mut out = Vec::new();
            filter.feed(&raw[..cut], &mut out);
            filter.feed(&raw[cut..], &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), whole, "cut at {cut}");
        }
        let mut filter = TermFilter::default();
        let mut out = Vec::new();
        for b in &raw {
            filter.feed(std::slice::from_ref(b), &mut out);
        }
        assert_eq!(String::from_utf8(out).unwrap(), whole);
    }

    #[test]
    fn a_bash_reply_parses_once_filtered() {
        let (b, e) = ("__BEGIN_1", "__END_1");
        let raw = format!(
            "\x1b[?2004l\r\x1b[?2004h# \x1b[?2004l\r\r\n{PROMPT}{}\x1b[?2004l\r__BEGIN_1\r\n\
             \x1b[01;34mdir\x1b[0m\r\n\r\n__END_1 0\r\n{PROMPT}",
            ECHO.trim_start_matches("# ").replace('\n', "\r\n")
        );
        assert_eq!(
            parse_reply(&filtered(raw.as_bytes()), b, e),
            reply("dir\n", 0)
        );
        // Unfiltered, the begin marker is not at a line start: the bug this fixes.
        assert_eq!(parse_reply(&raw.replace('\r', ""), b, e), None);
    }

    #[test]
    fn timeout_details_quote_the_last_output() {
        assert_eq!(shown_detail(b""), "the console showed nothing");
        assert_eq!(shown_detail(b" \n"), "the console showed nothing");
        assert_eq!(
            shown_detail(b"login: \x01\n"),
            "the console showed last: \"login: \\u{1}\""
        );
        let long = format!("{}tail", "x".repeat(500));
        let detail = shown_detail(long.as_bytes());
        assert!(
            detail.starts_with("the console showed last: …\"xxx"),
            "{detail}"
        );
        assert!(detail.ends_with("tail\""), "{detail}");
        assert!(detail.len() < ERROR_TAIL_CHARS + 40, "{detail}");
        let kvm = silence_detail(Duration::from_secs(180), Some(DomainType::Kvm));
        assert!(
            kvm.starts_with("the guest printed nothing on its serial console in 180 s"),
            "{kvm}"
        );
        assert!(
            kvm.contains("domain type kvm") && kvm.contains("domain_type"),
            "{kvm}"
        );
        let qemu = silence_detail(Duration::from_millis(500), Some(DomainType::Qemu));
        assert!(
            qemu.contains("in 0.5 s") && qemu.contains("domain type qemu"),
            "{qemu}"
        );
        assert_eq!(shorten("abcdef", 3), "abc…");
        assert_eq!(shorten("abc", 3), "abc");
    }

    #[test]
    fn base64_matches_rfc_4648() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), encoded, "{plain}");
        }
        assert_eq!(base64_encode(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn interpreters_come_from_the_shebang() {
        let words = |s: &str| script_interpreter(s);
        assert_eq!(words("echo hi\n"), ["sh"]);
        assert_eq!(words(""), ["sh"]);
        assert_eq!(words("#!/bin/bash\nset -e\n"), ["/bin/bash"]);
        assert_eq!(words("#! /bin/sh -eu \r\n"), ["/bin/sh", "-eu"]);
        assert_eq!(
            words("#!/usr/bin/env -S bash -e\n"),
            ["/usr/bin/env", "-S bash -e"]
        );
        assert_eq!(words("#!\n"), ["sh"]);
        assert_eq!(words(" #!/bin/bash"), ["sh"], "not a shebang");
    }

    #[test]
    fn script_plans_use_short_lines() {
        let script = format!("#!/bin/sh\n# {}\necho 'done'\n", "é".repeat(3000));
        let plan = ScriptPlan::new(&script, "/tmp/cloudlet-script-1x2");
        let chunks: String = plan
            .upload
            .iter()
            .filter_map(|c| c.strip_prefix("printf %s '"))
            .map(|c| c.split('\'').next().unwrap())
            .collect();
        assert_eq!(chunks, base64_encode(script.as_bytes()));
        assert!(plan.upload.len() > 10, "{}", plan.upload.len());
        for command in plan.upload.iter().chain([&plan.run]) {
            // With run()'s wrapper around it, a line stays under 1 KiB.
            assert!(command.len() + 120 < 1024, "{}", command.len());
            assert!(check_one_line(command).is_ok());
        }
        assert_eq!(
            plan.run,
            "'/bin/sh' '/tmp/cloudlet-script-1x2' </dev/null; __s=$?; \
             rm -f '/tmp/cloudlet-script-1x2'; (exit $__s)"
        );
    }

    /// The plan's commands in the host's shells, as `eval` in the guest would run them.
    #[test]
    fn script_plans_run_in_real_shells() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script").display().to_string();
        let script =
            "#!/bin/sh -u\nf() { printf '%s\\n' \"f:$1\"; }\nfor i in 1 2; do f \"$i\"; done\n\
            cat <<'EOF'\nit's $HOME\nEOF\nif read x; then echo read; else echo eof; fi\nexit 7\n";
        let plan = ScriptPlan::new(script, &path);
        let shells: Vec<Vec<&str>> = [vec!["sh"], vec!["bash"], vec!["busybox", "sh"]]
            .into_iter()
            .filter(|shell| {
                std::process::Command::new(shell[0])
                    .args(&shell[1..])
                    .args(["-c", "command -v base64"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .collect();
        assert!(!shells.is_empty());
        for shell in shells {
            let run = |command: &str| {
                std::process::Command::new(shell[0])
                    .args(&shell[1..])
                    .args(["-c", &format!("eval {}", shell_quote(command))])
                    .output()
                    .unwrap()
            };
            for step in &plan.upload {
                let out = run(step);
                assert!(out.status.success(), "{shell:?} {step}: {out:?}");
            }
            assert_eq!(std::fs::read_to_string(&path).unwrap(), script);
            let out = run(&plan.run);
            assert_eq!(out.status.code(), Some(7), "{shell:?}: {out:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "f:1\nf:2\nit's $HOME\neof\n",
                "{shell:?}"
            );
            assert!(
                std::fs::read_dir(dir.path()).unwrap().next().is_none(),
                "removed"
            );
        }
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
                // As bash 5 prints it: bracketed paste toggled around every command
                // (`ESC[?2004l CR` before the output), a title and a coloured prompt.
                let answer =
                    format!("{PROMPT}{line}\r\n\x1b[?2004l\r{b}\r\n{out}\r\n{e} {rc}\r\n{PROMPT}");
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

    /// A real interactive bash 5 on a pseudo-terminal (through util-linux `script`), with
    /// bracketed paste on as on a stock Debian guest and a coloured prompt: the protocol
    /// must not depend on busybox's plain output. Skipped where `script` or bash is missing.
    #[tokio::test]
    async fn talks_to_bash_on_a_pty() {
        use std::process::{Command, Stdio};
        let found = |tool: &str| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !found("script") || !found("bash") {
            eprintln!("SKIPPED talks_to_bash_on_a_pty: needs util-linux script and bash");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let wait = Duration::from_secs(20);
        let mut con = Console::connect(&path, wait).await.unwrap();
        let (socket, _) = listener.accept().unwrap();
        let output = socket.try_clone().unwrap();
        let mut bash = Command::new("script")
            .args(["-qfec", "bash --norc --noprofile -i", "/dev/null"])
            .env("TERM", "xterm")
            .env("HOME", dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(socket)))
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(output)))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let result = async {
            con.wait_ready(wait).await?;
            // A coloured prompt that also sets the window title.
            let prompt = r"PS1='\[\e]0;\u@guest\a\]\[\e[01;32m\]\u@guest\[\e[00m\]:\w\$ '";
            con.run(prompt, wait).await?;
            let paste = con.run("bind -v | grep bracketed-paste", wait).await?;
            let hello = con.run("echo hello-$((1+2))", wait).await?;
            let script = "#!/usr/bin/env bash\nset -e\nsquare() { echo $(( $1 * $1 )); }\n\
                for i in 2 3; do\n  square $i\ndone\nprintf '\\e[31mred\\e[0m\\n'\nfalse\necho unreached\n";
            let script = con.run_script(script, wait).await?;
            con.wait_for_line("MARK-ER", Duration::from_secs(2)).await?;
            Ok::<_, VirtError>((paste, hello, script))
        }
        .await;
        let _ = bash.kill();
        let _ = bash.wait();
        let (paste, hello, script) =
            result.unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", con.recent_output()));
        assert_eq!(paste.output, "set enable-bracketed-paste on\n", "{paste:?}");
        let shown = con.recent_output();
        assert!(
            shown.contains("@guest:") && !shown.contains('\x1b'),
            "{shown}"
        );
        assert_eq!(hello, reply("hello-3\n", 0).unwrap());
        assert_eq!(script, reply("4\n9\nred\n", 1).unwrap());
    }

    /// A guest that prints `shows` once and then never answers.
    async fn mute_guest(shows: &'static [u8]) -> (tempfile::TempDir, Console) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(shows).await.unwrap();
            let mut sink = [0u8; 4096];
            while s.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        });
        let con = Console::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        (dir, con)
    }

    #[tokio::test]
    async fn timeouts_say_what_the_console_showed() {
        let wait = Duration::from_millis(300);
        let (_dir, mut con) = mute_guest(b"").await;
        let err = con
            .wait_for_boot_marker("READY", wait, DomainType::Kvm)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, VirtError::ConsoleTimeout { .. }), "{err:?}");
        assert!(
            text.starts_with("timed out waiting for the console marker line `READY` (0.3 s): ")
                && text.contains("printed nothing on its serial console in 0.3 s")
                && text.contains("domain type kvm"),
            "{text}"
        );
        let err = con.run("true", wait).await.unwrap_err().to_string();
        assert!(
            err.contains("a guest command to finish (0.3 s): true: the console showed nothing"),
            "{err}"
        );

        let (_dir, mut con) =
            mute_guest(b"\x1b[1;32m[  OK  ]\x1b[0m Reached target.\r\nDebian login: ").await;
        let err = con
            .wait_for_boot_marker("READY", wait, DomainType::Qemu)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("the console showed last: \"[  OK  ] Reached target.\\nDebian login:\""),
            "{err}"
        );
        let err = con.wait_ready(wait).await.unwrap_err().to_string();
        assert!(
            err.starts_with("timed out waiting for the guest shell to answer `echo ok` (0.3 s): ")
                && err.contains("Debian login:"),
            "{err}"
        );
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
