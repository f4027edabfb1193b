//! How a failed command is reported on stderr: one line `error: ...`, or with `--json` the
//! daemon's error shape `{"error":{"code","message"}}` so scripts parse both streams.
//! Codes: the daemon's (docs/api.md) for its answers and for ids the CLI resolves;
//! `unreachable` / `transport` when the daemon could not be talked to; `local` otherwise.

use serde_json::{json, Value};

use crate::client::{ApiError, TransportError};
use crate::tls::TrustError;

/// Prints `e` on stderr.
#[allow(clippy::print_stderr)]
pub fn error(e: &anyhow::Error, json: bool) {
    if json {
        eprintln!("{}", as_json(e));
    } else {
        // One line, whatever the error chain.
        eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
    }
}

/// `{"error":{"code","message"}}` of `e` (one line: it is printed compact).
pub fn as_json(e: &anyhow::Error) -> Value {
    json!({"error": {"code": code(e), "message": message(e)}})
}

fn code(e: &anyhow::Error) -> String {
    if let Some(a) = e.downcast_ref::<ApiError>() {
        a.code.clone()
    } else if let Some(t) = e.downcast_ref::<TrustError>() {
        t.code.to_string()
    } else if let Some(t) = e.downcast_ref::<TransportError>() {
        if t.unreachable {
            "unreachable"
        } else {
            "transport"
        }
        .to_string()
    } else {
        "local".to_string()
    }
}

/// The chain as in the one-line form, without the ` (code)` the code field now carries.
fn message(e: &anyhow::Error) -> String {
    e.chain()
        .map(
            |c| match (c.downcast_ref::<ApiError>(), c.downcast_ref::<TrustError>()) {
                (Some(a), _) => match &a.hint {
                    Some(hint) => format!("{}; {hint}", a.message),
                    None => a.message.clone(),
                },
                (None, Some(t)) => t.message.clone(),
                (None, None) => c.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_errors_keep_their_code() {
        let e: anyhow::Error = ApiError::local("not-found", "no overlay matches `x`".into()).into();
        assert_eq!(
            as_json(&e),
            json!({"error": {"code": "not-found", "message": "no overlay matches `x`"}})
        );
        let e = e.context("overlay 01 saved on the cloudlet, but downloading it failed");
        assert_eq!(
            as_json(&e)["error"]["message"],
            "overlay 01 saved on the cloudlet, but downloading it failed: no overlay matches `x`"
        );
        assert_eq!(as_json(&e)["error"]["code"], "not-found");
    }

    #[test]
    fn other_errors_are_local_or_transport() {
        let e = anyhow::anyhow!("No such file").context("opening a.overlay");
        assert_eq!(
            as_json(&e),
            json!({"error": {"code": "local", "message": "opening a.overlay: No such file"}})
        );
        let e: anyhow::Error = TransportError {
            unreachable: true,
            message: "cannot reach cloudletd".into(),
        }
        .into();
        assert_eq!(as_json(&e)["error"]["code"], "unreachable");
    }
}
