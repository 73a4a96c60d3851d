//! Flag values checked before anything runs. Numeric bounds are clap value
//! parsers: a value the tool cannot honour is an error naming the flag, never a
//! panic deep inside (a deadline past what `Instant` or gRPC's `grpc-timeout`
//! can hold, a time scale that overflows a `Duration`, a lab of no nodes).
//! Certificate pins are checked against the definition.

use std::collections::BTreeMap;

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

/// A budget in seconds that may be zero (none): 0 ..= [`MAX_SECS`].
pub fn secs_or_zero(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    secs(s).map_err(|e| e.replace("between 1 and", "between 0 and"))
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

/// `--cluster NAME`: the same plain-name rule as `clusterName`, because it
/// becomes a folder under the state directory (`../x` would escape it).
pub fn cluster_name(s: &str) -> Result<String, String> {
    endsys_config::machineconfig::checks::cluster_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.replacen("clusterName", "--cluster", 1))
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

/// `--cert-fingerprint HOSTNAME=FINGERPRINT` values as hostname → fingerprint,
/// every hostname one of the definition's.
pub fn fingerprint_pins(
    pins: &[String],
    def: &crate::engine::Definition,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pin in pins {
        // Split at the first '=': base64 fingerprints end in '=' padding.
        let Some((host, fp)) = pin
            .split_once('=')
            .filter(|(h, f)| !h.is_empty() && !f.is_empty())
        else {
            return Err(format!(
                "--cert-fingerprint {pin:?}: expected HOSTNAME=FINGERPRINT\n  next action:  e.g. --cert-fingerprint cp1=<the fingerprint the node console prints>"
            ));
        };
        use base64::Engine;
        let digest = base64::engine::general_purpose::STANDARD.decode(fp);
        if digest.as_ref().map(Vec::len) != Ok(32) {
            return Err(format!(
                "--cert-fingerprint {host}={fp}: not a fingerprint (expected the base64 of a SHA-256, 44 characters ending in '=', as the node console prints it)"
            ));
        }
        if !def.nodes.iter().any(|n| n.hostname == host) {
            let known: Vec<&str> = def.nodes.iter().map(|n| n.hostname.as_str()).collect();
            return Err(format!(
                "--cert-fingerprint: no node {host:?} in the definition (nodes: {})",
                known.join(", ")
            ));
        }
        out.insert(host.to_string(), fp.to_string());
    }
    Ok(out)
}

/// What is wrong with a kubeconfig, without the wrapper's own words.
pub fn kube_detail(e: &crate::kube::KubeError) -> String {
    match e {
        crate::kube::KubeError::Kubeconfig(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_refuse_what_would_panic_later() {
        assert_eq!(secs("20"), Ok(20));
        assert!(secs("360000000000").unwrap_err().contains("7 days"));
        assert!(secs("0").is_err() && secs("-1").is_err());
        assert_eq!(secs_or_zero("0"), Ok(0));
        assert!(secs_or_zero("99999999999")
            .unwrap_err()
            .contains("between 0 and"));
        assert_eq!(time_scale("0"), Ok(0.0));
        assert!(time_scale("1e300").is_err());
        assert!(time_scale("NaN").is_err() && time_scale("inf").is_err());
        assert!(time_scale("-1").is_err());
        assert!(node_count("0").is_err());
        assert_eq!(node_count("3"), Ok(3));
    }
}
