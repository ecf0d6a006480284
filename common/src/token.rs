//! Page tokens are opaque to clients: hex of a small text form. These helpers only do
//! the encoding (and the one hex decoder of the workspace); each service decides what
//! its token says and validates it.

/// Hex-encodes `plain`.
pub fn encode(plain: &str) -> String {
    plain.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a token made by [`encode`], or `None` when it is not one (or longer than
/// `max_plain` bytes once decoded).
pub fn decode(token: &str, max_plain: usize) -> Option<String> {
    if token.len() > 2 * max_plain || !token.len().is_multiple_of(2) {
        return None;
    }
    String::from_utf8(hex_bytes(token)?).ok()
}

/// The bytes of an even-length hex string; None when it is not one.
pub fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_junk() {
        assert_eq!(decode(&encode("v1|16|3|user-9"), 100).as_deref(), Some("v1|16|3|user-9"));
        assert_eq!(decode("", 10).as_deref(), Some(""));
        for junk in ["x", "zz", "é0", "ff"] {
            assert_eq!(decode(junk, 100), None, "{junk}");
        }
        assert_eq!(decode(&encode("abcdef"), 5), None, "too long");
    }
}
