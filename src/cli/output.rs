//! Small formatting pieces shared by the human-readable outputs.

use serde::Serialize;

pub use crate::human::thousands;

/// The process's peak resident memory so far (VmHWM), in KiB; `None` off Linux.
/// Reported by the bulk commands so memory can be measured from outside.
pub fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Prints `value` as one line of JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// A text bar `[████████░░]` of `width` cells for a fraction in 0..=1.
pub fn bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "█".repeat(filled), "░".repeat(width - filled))
}

/// Pads or cuts `s` to `width` characters.
pub fn cell(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        format!("{s}{}", " ".repeat(width - n))
    } else {
        let mut cut: String = s.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_is_bounded() {
        assert_eq!(bar(0.5, 4), "[██░░]");
        assert_eq!(bar(2.0, 2), "[██]");
    }
}
