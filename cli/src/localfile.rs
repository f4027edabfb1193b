//! Requests naming local files (`disk`, `save_file`, `kernel`, ...): the daemon reads a path
//! itself when it lies in its import directories; otherwise (403 `path-not-allowed`, or
//! `--upload`) the CLI uploads the file to `POST /api/v1/uploads` and names it
//! `upload:<id>`. An upload is consumed by the request naming it, so a retry uploads again.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use reqwest::Method;
use reqwest::Url;
use serde_json::Value;

use crate::client::ApiError;
use crate::ctx::Ctx;
use crate::transfer;
use cloudlet_api::Upload;

/// A JSON field holding a local file.
#[derive(Debug, Clone)]
pub struct FileField {
    /// Field name in the request body.
    pub field: &'static str,
    /// The file as the user named it.
    pub path: PathBuf,
}

/// A base's name: `--name`, else the disk file's stem (as Elijah named bases).
pub fn base_name(name: Option<&str>, disk: &Path) -> anyhow::Result<String> {
    match name {
        Some(n) => Ok(n.to_string()),
        None => disk
            .file_stem()
            .and_then(|s| s.to_str())
            .map(String::from)
            .ok_or_else(|| {
                anyhow::anyhow!("cannot name the base after {}: pass --name", disk.display())
            }),
    }
}

/// The absolute path to send for a file the user named: canonical when it exists here;
/// as typed when absolute (it may exist only on the daemon's host).
pub fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    match std::fs::canonicalize(path) {
        Ok(p) => Ok(p),
        Err(_) if path.is_absolute() => Ok(path.to_path_buf()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Sends `body` with each file field set (path first when the daemon runs here, upload on
/// refusal or when it runs elsewhere) through `send`, which makes the request (plain or
/// with progress) and returns the answer.
pub fn send_with_files(
    ctx: &Ctx,
    mut body: Value,
    files: &[FileField],
    force_upload: bool,
    send: impl Fn(&Value) -> anyhow::Result<Value>,
) -> anyhow::Result<Value> {
    // A path names a file on the daemon's host: the same file only when that host is this one.
    if !force_upload && is_loopback_url(&ctx.global.url) {
        for f in files {
            body[f.field] = Value::String(absolute(&f.path)?.display().to_string());
        }
        match send(&body) {
            Err(e) if is_path_refused(&e) && files.iter().all(|f| f.path.is_file()) => {}
            other => return other,
        }
    }
    for f in files {
        body[f.field] = Value::String(format!("upload:{}", upload(ctx, &f.path)?));
    }
    send(&body)
}

/// Whether the daemon at `url` runs on this machine: its host is a loopback address
/// (127.0.0.0/8, ::1) or `localhost`. Anything else, even an address of this machine,
/// counts as remote (uploading is always correct, only slower).
pub fn is_loopback_url(url: &str) -> bool {
    let Some(host) = Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
    else {
        return false;
    };
    // IPv6 hosts come bracketed (`[::1]`).
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

fn is_path_refused(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiError>()
        .is_some_and(|a| a.code == "path-not-allowed")
}

/// Uploads one file; its upload id.
pub fn upload(ctx: &Ctx, path: &Path) -> anyhow::Result<String> {
    let client = ctx.client()?;
    let rb = client.request(Method::POST, "/api/v1/uploads");
    let (rb, pb) = transfer::with_file_body(
        rb,
        path,
        ctx.progress(),
        &format!("uploading {}", path.display()),
    )?;
    let resp = client.send(rb);
    pb.finish_and_clear();
    let answer: Upload = serde_json::from_value(crate::client::read_json(resp?)?)
        .with_context(|| format!("uploading {}: unexpected answer", path.display()))?;
    Ok(answer.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_go_first_only_to_a_daemon_on_this_machine() {
        for url in [
            "http://127.0.0.1:8021",
            "http://127.1.2.3:8021/",
            "http://localhost:8021",
            "http://LOCALHOST.:8021",
            "http://[::1]:8021",
            "http://[::ffff:127.0.0.1]:8021",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "http://10.0.0.5:8021",
            "http://cloudlet.local:8021",
            "http://localhost.example.org:8021",
            "http://[2001:db8::1]:8021",
            "http://0.0.0.0:8021",
            "not a url",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }
}
