//! ListOnlineUsers page tokens: where the walk stopped (bucket, last id scanned),
//! bound to the bucket count so a token from a differently configured deployment is
//! rejected rather than silently skipping users. Opaque to clients (hex of a small
//! text form), validated on the way in like any other input.
use push_common::{token, validate::id_problem};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub bucket: u32,
    /// Last id scanned in `bucket`; empty to start at the bucket's first id.
    pub after: String,
}

impl PageToken {
    pub fn start() -> Self {
        Self { bucket: 0, after: String::new() }
    }

    pub fn encode(&self, buckets: u32) -> String {
        token::encode(&format!("v1|{buckets}|{}|{}", self.bucket, self.after))
    }

    /// The token, or a description of what is wrong with it. Empty means the start.
    pub fn decode(token: &str, buckets: u32) -> Result<Self, String> {
        if token.is_empty() {
            return Ok(Self::start());
        }
        let bad = || "is not a token returned by this service".to_string();
        let plain = token::decode(token, 256).ok_or_else(bad)?;
        let mut parts = plain.splitn(4, '|');
        let (Some("v1"), Some(b), Some(bucket), Some(after)) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if b.parse::<u32>().ok() != Some(buckets) {
            return Err("was issued under a different online-bucket count; start over".into());
        }
        let bucket: u32 = bucket.parse().map_err(|_| bad())?;
        if bucket >= buckets || (!after.is_empty() && id_problem(after).is_some()) {
            return Err(bad());
        }
        Ok(Self { bucket, after: after.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let t = PageToken { bucket: 3, after: "user-17".into() };
        assert_eq!(PageToken::decode(&t.encode(16), 16), Ok(t));
        assert_eq!(PageToken::decode("", 16), Ok(PageToken::start()));
    }

    #[test]
    fn rejects_forged_or_foreign_tokens() {
        let t = PageToken { bucket: 3, after: "u".into() };
        assert!(PageToken::decode(&t.encode(16), 8).is_err());
        let out_of_range = PageToken { bucket: 20, after: "u".into() };
        assert!(PageToken::decode(&out_of_range.encode(16), 16).is_err());
        for junk in ["x", "zz", "abc", "76317c", &"00".repeat(300)] {
            assert!(PageToken::decode(junk, 16).is_err(), "{junk}");
        }
        let bad_id = PageToken { bucket: 1, after: "a{b".into() };
        assert!(PageToken::decode(&bad_id.encode(16), 16).is_err());
    }
}
