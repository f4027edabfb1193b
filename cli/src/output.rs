//! Human output: sizes, durations, aligned tables, a session's summary. Results go to
//! stdout; warnings and progress to stderr. `--json` prints the daemon's JSON as received.

use cloudlet_api::Session;

/// Prints to stdout (the one place the CLI writes results).
#[allow(clippy::print_stdout)]
pub fn print(text: &str) {
    println!("{text}");
}

/// A byte count as a short human size (decimal units, like Elijah's MB figures).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Rows as a table: first column left-aligned, the others right-aligned.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c == 0 {
                    format!("{s:<w$}", w = widths[c])
                } else {
                    format!("{s:>w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Prints a JSON value, pretty (the `--json` output of every command).
pub fn print_json(value: &serde_json::Value) {
    print(&serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
}

/// A warning on stderr (never on stdout: it would corrupt `--json`).
#[allow(clippy::print_stderr)]
pub fn warn(text: &str) {
    eprintln!("warning: {text}");
}

/// Milliseconds as "45 ms" or "1.2 s".
pub fn duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// An RFC 3339 time shortened to the second, for tables.
pub fn time(t: &str) -> String {
    let t = t.replace('T', " ");
    match t.find('.') {
        Some(dot) => t[..dot].to_string(),
        None => t.trim_end_matches('Z').to_string(),
    }
}

/// A short content id (bases) for tables; ids are accepted by unique prefix. (Session and
/// overlay ids are UUIDv7, whose first digits are a timestamp: shown in full.)
pub fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// `127.0.0.1:<port>` of a session's VNC display.
pub fn vnc(session: &Session) -> Option<String> {
    session.vnc_port.map(|p| format!("127.0.0.1:{p}"))
}

/// A session as `key  value` lines: what it is, where to reach it (forwarded ports at
/// `api_host`, the daemon's host), how long each step took.
pub fn session(s: &Session, api_host: &str) -> String {
    let mut lines: Vec<(String, String)> = vec![
        ("session".into(), s.id.clone()),
        ("kind".into(), s.kind.to_string()),
        ("state".into(), s.state.to_string()),
    ];
    let mut opt = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            lines.push((k.into(), v));
        }
    };
    opt("base", s.base_id.clone());
    opt("overlay", s.overlay_id.clone());
    opt("vm", s.vm_name.clone());
    if s.state.is_active() {
        opt("vnc", vnc(s));
    }
    opt("error", s.error.clone());
    let mut text = String::new();
    for (k, v) in &lines {
        text.push_str(&format!("{k:<10} {v}\n"));
    }
    if s.state.is_active() {
        for (guest, host) in &s.host_ports {
            text.push_str(&format!(
                "{:<10} guest {guest} \u{2192} {api_host}:{host}\n",
                "port"
            ));
        }
    }
    for r in &s.script_results {
        let mark = if r.status == 0 {
            "ok".to_string()
        } else {
            format!("exit {}", r.status)
        };
        text.push_str(&format!("{:<10} [{mark}] {}\n", "script", r.command));
    }
    if !s.timings.is_empty() {
        text.push_str("timings\n");
        let mut rows: Vec<Vec<String>> = s
            .timings
            .iter()
            .map(|(step, ms)| vec![format!("  {step}"), duration_ms(*ms)])
            .collect();
        rows.push(vec![
            "  total".into(),
            duration_ms(s.timings.values().sum()),
        ]);
        text.push_str(&table(&rows));
    }
    text.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(999), "999 B");
        assert_eq!(size(4_320_000), "4.3 MB");
        assert_eq!(size(2_147_483_648), "2.1 GB");
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms(45), "45 ms");
        assert_eq!(duration_ms(1234), "1.2 s");
    }

    #[test]
    fn times_are_shortened() {
        assert_eq!(time("2026-11-25T10:11:12.345Z"), "2026-11-25 10:11:12");
        assert_eq!(time("2026-11-25T10:11:12Z"), "2026-11-25 10:11:12");
    }

    #[test]
    fn tables_align() {
        let t = table(&[
            vec!["".into(), "count".into()],
            vec!["memory".into(), "7".into()],
        ]);
        assert_eq!(t, "        count\nmemory      7\n");
    }
}
