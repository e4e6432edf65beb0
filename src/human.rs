//! How numbers read for a person in every output and document: thousands separators
//! and progress fractions. One place, so the CLI, handoffs, reports and prompts agree.

/// `27472` → `27,472`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `10/40 (25.0%)`, `10` without a total.
pub fn progress_text(done: u64, total: Option<u64>) -> String {
    match total {
        Some(t) if t > 0 => format!("{done}/{t} ({:.1}%)", done as f64 * 100.0 / t as f64),
        Some(t) => format!("{done}/{t}"),
        None => done.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_cases() {
        for (n, want) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (27472, "27,472"),
            (1234567, "1,234,567"),
        ] {
            assert_eq!(thousands(n), want);
        }
    }

    #[test]
    fn progress_cases() {
        assert_eq!(progress_text(10, Some(40)), "10/40 (25.0%)");
        assert_eq!(progress_text(0, Some(0)), "0/0");
        assert_eq!(progress_text(7, None), "7");
    }
}
