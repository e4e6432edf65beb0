//! Wall-clock time as the database and documents show it: UTC, RFC 3339, seconds.
//! One place, so tests and every table agree on the format.

use chrono::{SecondsFormat, Utc};

/// Now, e.g. `2025-11-06T00:13:55Z`.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}
