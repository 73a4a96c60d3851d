//! Addresses as the definition and the operator write them.

/// The host part of `host[:port]` (an IPv6 address without brackets is kept whole).
pub fn host_of(address: &str) -> &str {
    match address.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => address,
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn strips_a_port_only() {
        assert_eq!(host_of("10.0.0.1:50000"), "10.0.0.1");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
        assert_eq!(host_of("fd00::1"), "fd00::1");
        assert_eq!(host_of("kube1"), "kube1");
    }
}
