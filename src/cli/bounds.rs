//! Parse-time bounds of numeric flags: a value the tool cannot honour is a clap
//! error naming the flag, never a panic deep inside (a deadline past what
//! `Instant` or gRPC's `grpc-timeout` can hold, a time scale that overflows a
//! `Duration`, a lab of no nodes).

/// The longest deadline any flag takes: a week, in seconds.
pub const MAX_SECS: u64 = 7 * 24 * 3600;

/// The largest lab time scale (1 ≈ real hardware).
pub const MAX_TIME_SCALE: f64 = 100.0;

/// A deadline in seconds: 1 ..= [`MAX_SECS`].
pub fn secs(s: &str) -> Result<u64, String> {
    let v: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected whole seconds, got {s:?}"))?;
    if v == 0 || v > MAX_SECS {
        return Err(format!(
            "must be between 1 and {MAX_SECS} seconds (7 days), got {v}"
        ));
    }
    Ok(v)
}

/// A lab time scale: 0 (no delays) ..= [`MAX_TIME_SCALE`].
pub fn time_scale(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a number, got {s:?}"))?;
    if !(0.0..=MAX_TIME_SCALE).contains(&v) {
        return Err(format!(
            "must be between 0 (no delays) and {MAX_TIME_SCALE}, got {s}"
        ));
    }
    Ok(v)
}

/// A node count: at least one.
pub fn node_count(s: &str) -> Result<usize, String> {
    let v: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a whole number, got {s:?}"))?;
    if v == 0 {
        return Err("a lab needs at least one node".into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_refuse_what_would_panic_later() {
        assert_eq!(secs("20"), Ok(20));
        assert!(secs("360000000000").unwrap_err().contains("7 days"));
        assert!(secs("0").is_err() && secs("-1").is_err());
        assert_eq!(time_scale("0"), Ok(0.0));
        assert!(time_scale("1e300").is_err());
        assert!(time_scale("NaN").is_err() && time_scale("inf").is_err());
        assert!(time_scale("-1").is_err());
        assert!(node_count("0").is_err());
        assert_eq!(node_count("3"), Ok(3));
    }
}
