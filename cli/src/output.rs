//! Human output: sizes, aligned tables. JSON output is serde_json of the same structs.

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
    fn tables_align() {
        let t = table(&[
            vec!["".into(), "count".into()],
            vec!["memory".into(), "7".into()],
        ]);
        assert_eq!(t, "        count\nmemory      7\n");
    }
}
