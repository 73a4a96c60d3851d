//! Wall-clock time as the tool writes it: Unix milliseconds in journals and
//! events, RFC 3339 UTC in files other tools read (SOPS `lastmodified`, backup
//! names, Kubernetes `metav1.Time`). Calendar arithmetic is the `time` crate's.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_secs() -> i64 {
    (now_ms() / 1000) as i64
}

fn utc(secs: i64, nanos: u32) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .replace_nanosecond(nanos)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn two(n: u8) -> String {
    format!("{n:02}")
}

fn date_time(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{}-{}T{}:{}:{}",
        t.year(),
        two(u8::from(t.month())),
        two(t.day()),
        two(t.hour()),
        two(t.minute()),
        two(t.second())
    )
}

/// `2026-01-02T03:04:05Z` for Unix seconds.
pub fn rfc3339_secs(secs: i64) -> String {
    format!("{}Z", date_time(utc(secs, 0)))
}

/// `2026-01-02T03:04:05.678Z` for Unix milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let t = utc((ms / 1000) as i64, ((ms % 1000) as u32) * 1_000_000);
    format!("{}.{:03}Z", date_time(t), ms % 1000)
}

/// Unix seconds of an RFC 3339 time (any offset; fractions dropped).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_utc() {
        assert_eq!(rfc3339_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        // 2024-02-29 (a leap day) 12:34:56.789 UTC.
        assert_eq!(rfc3339_ms(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
        assert_eq!(parse_rfc3339("2024-02-29T12:34:56Z"), Some(1_709_210_096));
        assert_eq!(
            parse_rfc3339("2024-02-29T13:34:56+01:00"),
            Some(1_709_210_096)
        );
        assert_eq!(parse_rfc3339("2024-02-30T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
