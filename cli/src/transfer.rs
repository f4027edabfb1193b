//! Streamed file transfers: uploads read the file as reqwest sends it (never the whole file
//! in memory) and count bytes into a bar; downloads write `FILE.part`, resume it with a
//! Range request (If-Range: the `Last-Modified` it began with, kept in `FILE.part.modified`),
//! and rename it to `FILE` when complete.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::ProgressBar;
use reqwest::blocking::{Body, RequestBuilder, Response};
use reqwest::header::{
    CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, IF_RANGE, LAST_MODIFIED, RANGE,
};
use reqwest::{Method, StatusCode};

use crate::client::Client;
use crate::progress::Progress;

/// A reader that advances a progress bar by the bytes read through it.
pub struct CountingReader<R> {
    inner: R,
    pb: ProgressBar,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pb.inc(n as u64);
        Ok(n)
    }
}

/// The request `rb` with `path` as its streamed raw body, and the bar counting it.
pub fn with_file_body(
    rb: RequestBuilder,
    path: &Path,
    progress: Progress,
    what: &str,
) -> anyhow::Result<(RequestBuilder, ProgressBar)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let pb = progress.bytes(what, Some(len));
    let reader = CountingReader {
        inner: io::BufReader::with_capacity(1 << 20, file),
        pb: pb.clone(),
    };
    let rb = rb
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(Body::sized(reader, len));
    Ok((rb, pb))
}

/// What a download did.
#[derive(Debug, serde::Serialize)]
pub struct Downloaded {
    /// The final file.
    pub file: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Bytes kept from an earlier interrupted download (0: started afresh).
    pub resumed_from: u64,
}

impl Downloaded {
    /// `FILE (4.3 MB, resumed at 2.1 MB)` for the human output.
    pub fn summary(&self) -> String {
        let resumed = if self.resumed_from > 0 {
            format!(", resumed at {}", crate::output::size(self.resumed_from))
        } else {
            String::new()
        };
        format!(
            "{} ({}{resumed})",
            self.file.display(),
            crate::output::size(self.bytes)
        )
    }
}

/// Downloads `GET path` into `dest` through `dest.part`, resuming an existing `.part`.
/// `resume` says how to resume after an interruption ("run the command again").
pub fn download(
    client: &Client,
    path: &str,
    dest: &Path,
    progress: Progress,
    resume: &str,
) -> anyhow::Result<Downloaded> {
    let part = part_path(dest);
    let stamp = stamp_path(&part);
    let mut restarted = false;
    loop {
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        let mut rb = client.request(Method::GET, path);
        if have > 0 {
            rb = rb.header(RANGE, format!("bytes={have}-"));
            // Only the rest of the same file: if it changed, the daemon sends it whole.
            if let Some(modified) = read_stamp(&stamp) {
                rb = rb.header(IF_RANGE, modified);
            }
        }
        let resp = client.send_raw(rb)?;
        let content_range = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok());
        match plan(resp.status(), content_range, have) {
            Plan::Fresh => return receive(resp, &part, dest, 0, progress, resume),
            Plan::Append => return receive(resp, &part, dest, have, progress, resume),
            Plan::Complete => {
                drop(resp);
                finish(&part, dest)?;
                return Ok(Downloaded {
                    file: dest.to_path_buf(),
                    bytes: have,
                    resumed_from: have,
                });
            }
            // Once: after it there is no `.part`, so no range to refuse.
            Plan::Restart if !restarted => {
                restarted = true;
                drop(resp);
                remove_if_present(&part)?;
                remove_if_present(&stamp)?;
            }
            Plan::Restart => anyhow::bail!(
                "the daemon's answer to resuming {} does not fit it ({}); remove it and try again",
                part.display(),
                resp.status()
            ),
            Plan::Fail => {
                let status = resp.status();
                client.check(resp)?;
                anyhow::bail!("unexpected answer {status} to a download");
            }
        }
    }
}

/// What an answer means for a `.part` holding `have` bytes (0: no range was asked).
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// The whole file follows: write it from byte 0.
    Fresh,
    /// The rest follows, from byte `have`: append it.
    Append,
    /// `.part` already holds the whole file (416 naming its exact size).
    Complete,
    /// `.part` does not fit the file (longer, or a range from elsewhere): start over.
    Restart,
    /// An error answer.
    Fail,
}

fn plan(status: StatusCode, content_range: Option<&str>, have: u64) -> Plan {
    match status {
        StatusCode::PARTIAL_CONTENT if range_start(content_range) == Some(have) => Plan::Append,
        StatusCode::PARTIAL_CONTENT => Plan::Restart,
        StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => {
            if unsatisfied_size(content_range) == Some(have) {
                Plan::Complete
            } else {
                Plan::Restart
            }
        }
        // 200: no range asked, the range ignored, or the file changed (If-Range).
        s if s.is_success() => Plan::Fresh,
        _ => Plan::Fail,
    }
}

/// `START` of `Content-Range: bytes START-END/SIZE`.
fn range_start(content_range: Option<&str>) -> Option<u64> {
    let (start, _) = content_range?
        .trim()
        .strip_prefix("bytes ")?
        .split_once('-')?;
    start.trim().parse().ok()
}

/// `SIZE` of `Content-Range: bytes */SIZE` (a 416's answer).
fn unsatisfied_size(content_range: Option<&str>) -> Option<u64> {
    content_range?
        .trim()
        .strip_prefix("bytes ")?
        .trim_start()
        .strip_prefix("*/")?
        .trim()
        .parse()
        .ok()
}

/// Writes the body of `resp` into `part` from byte `from`, then renames it to `dest`.
fn receive(
    mut resp: Response,
    part: &Path,
    dest: &Path,
    from: u64,
    progress: Progress,
    resume: &str,
) -> anyhow::Result<Downloaded> {
    let remaining = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(from > 0)
        .truncate(from == 0)
        .open(part)
        .with_context(|| format!("creating {}", part.display()))?;
    if from == 0 {
        // The version this `.part` holds, for If-Range when it is resumed later.
        let modified = resp
            .headers()
            .get(LAST_MODIFIED)
            .and_then(|v| v.to_str().ok());
        write_stamp(&stamp_path(part), modified)?;
    }
    let pb = progress.bytes(
        &format!("downloading {}", dest.display()),
        remaining.map(|r| r + from),
    );
    pb.set_position(from);
    let mut writer = ProgressWriter {
        inner: &mut out,
        pb: pb.clone(),
    };
    let copied = io::copy(&mut resp, &mut writer).map_err(|e| {
        anyhow::anyhow!(
            "download interrupted after {} bytes ({}); {resume} to resume from {}",
            writer.pb.position(),
            crate::client::root_cause(&e),
            part.display()
        )
    })?;
    pb.finish_and_clear();
    if let Some(expected) = remaining {
        if copied != expected {
            anyhow::bail!(
                "download ended after {copied} of {expected} bytes; {resume} to resume from {}",
                part.display()
            );
        }
    }
    out.sync_all()
        .with_context(|| format!("writing {}", part.display()))?;
    drop(out);
    finish(part, dest)?;
    Ok(Downloaded {
        file: dest.to_path_buf(),
        bytes: from + copied,
        resumed_from: from,
    })
}

/// `.part` complete: it becomes `dest`, and its stamp goes.
fn finish(part: &Path, dest: &Path) -> anyhow::Result<()> {
    std::fs::rename(part, dest).with_context(|| format!("renaming to {}", dest.display()))?;
    remove_if_present(&stamp_path(part))
}

/// `FILE.part.modified`: the `Last-Modified` of the answer `FILE.part` began with.
fn stamp_path(part: &Path) -> PathBuf {
    let mut name = part.as_os_str().to_os_string();
    name.push(".modified");
    PathBuf::from(name)
}

fn read_stamp(stamp: &Path) -> Option<String> {
    let text = std::fs::read_to_string(stamp).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Records `modified` (or removes a stale stamp when the answer had none).
fn write_stamp(stamp: &Path, modified: Option<&str>) -> anyhow::Result<()> {
    match modified {
        Some(m) => std::fs::write(stamp, m).with_context(|| format!("writing {}", stamp.display())),
        None => remove_if_present(stamp),
    }
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// `FILE.part` next to `FILE`.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_os_string();
    name.push(".part");
    PathBuf::from(name)
}

struct ProgressWriter<'a, W> {
    inner: &'a mut W,
    pb: ProgressBar,
}

impl<W: Write> Write for ProgressWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pb.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_files_sit_next_to_the_target() {
        assert_eq!(
            part_path(Path::new("/tmp/base.tar")),
            PathBuf::from("/tmp/base.tar.part")
        );
        assert_eq!(
            stamp_path(&part_path(Path::new("/tmp/base.tar"))),
            PathBuf::from("/tmp/base.tar.part.modified")
        );
    }

    #[test]
    fn answers_to_a_resumed_download() {
        let s = |code: u16| StatusCode::from_u16(code).unwrap();
        assert_eq!(plan(s(200), None, 0), Plan::Fresh);
        assert_eq!(
            plan(s(200), None, 10),
            Plan::Fresh,
            "range ignored or file changed"
        );
        assert_eq!(plan(s(206), Some("bytes 10-99/100"), 10), Plan::Append);
        assert_eq!(plan(s(206), Some("bytes 0-99/100"), 10), Plan::Restart);
        assert_eq!(plan(s(206), None, 10), Plan::Restart);
        assert_eq!(plan(s(416), Some("bytes */100"), 100), Plan::Complete);
        assert_eq!(plan(s(416), Some("bytes */100"), 150), Plan::Restart);
        assert_eq!(plan(s(416), None, 150), Plan::Restart);
        assert_eq!(
            plan(s(416), Some("bytes */0"), 0),
            Plan::Fail,
            "no range was asked"
        );
        assert_eq!(plan(s(404), None, 10), Plan::Fail);
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(range_start(Some("bytes 512-1023/1024")), Some(512));
        assert_eq!(range_start(Some("bytes */1024")), None);
        assert_eq!(range_start(Some("items 1-2/3")), None);
        assert_eq!(unsatisfied_size(Some("bytes */1024")), Some(1024));
        assert_eq!(unsatisfied_size(Some("bytes 0-1/2")), None);
        assert_eq!(unsatisfied_size(None), None);
    }
}
