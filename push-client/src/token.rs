//! Device tokens: where they come from ([`TokenSource`]) and when to fetch the next one.
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use tokio::time::Instant;

/// Any error a token source returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A token being fetched.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send + 'static>>;

/// Where a client gets a fresh device token (a JWT from your auth service): at start,
/// before the current one expires, and when the gateway says it expired.
///
/// Any `Fn() -> impl Future<Output = Result<String, E>>` is one:
///
/// ```
/// # async fn fetch_from_my_auth_service() -> Result<String, std::io::Error> { Ok("t".into()) }
/// use push_client::TokenSource;
///
/// fn takes(_: impl TokenSource) {}
/// takes(|| async { fetch_from_my_auth_service().await });
/// ```
///
/// Return a token issued for this call, not a cached one about to expire: the client
/// asks ahead of the expiry and schedules the next refresh from the token's `exp`.
pub trait TokenSource: Send + Sync + 'static {
    fn token(&self) -> TokenFuture;
}

impl<F, Fut, E> TokenSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn token(&self) -> TokenFuture {
        let fut = self();
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

/// A token that never changes (an API key, or a token the app replaces by building a
/// new client).
pub(crate) struct Fixed(pub Arc<str>);

impl TokenSource for Fixed {
    fn token(&self) -> TokenFuture {
        let t = self.0.to_string();
        Box::pin(async move { Ok(t) })
    }
}

/// A token in use and when to replace it.
#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub value: Arc<str>,
    /// When to fetch the next one; `None` when it does not say when it expires (not a
    /// JWT, or no `exp`): then only a refusal makes the client fetch another.
    pub refresh_at: Option<Instant>,
    /// Set once the gateway refused it: fetch another before the next attempt.
    pub refused: bool,
}

impl Token {
    pub fn new(value: String) -> Self {
        let refresh_at = expiry(&value).map(|exp| Instant::now() + refresh_after(exp, SystemTime::now()));
        Token { value: value.into(), refresh_at, refused: false }
    }

    /// Whether to fetch another before using it.
    pub fn stale(&self, now: Instant) -> bool {
        self.refused || self.refresh_at.is_some_and(|at| now >= at)
    }
}

/// Shortest wait before a refresh: a source that hands out tokens about to expire (or
/// the same token again) is asked at most this often.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Refresh at least this long before the expiry...
const MIN_MARGIN: Duration = Duration::from_secs(5);

/// How long after `now` to refresh a token that expires at `exp`: a margin of 10% of
/// its remaining life, at least 5 s, but no more than half of it (a short-lived token is
/// still used for a while), and never sooner than a second.
pub(crate) fn refresh_after(exp: SystemTime, now: SystemTime) -> Duration {
    let life = exp.duration_since(now).unwrap_or_default();
    let margin = (life / 10).max(MIN_MARGIN).min(life / 2);
    (life - margin).max(MIN_REFRESH)
}

/// The `exp` claim of a JWT, read without verifying anything (the gateway verifies;
/// the client only needs to know when to ask for the next token).
pub(crate) fn expiry(token: &str) -> Option<SystemTime> {
    // Signers omit the padding (RFC 7515); accept it anyway.
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE.decode(payload).ok()?).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    (exp.is_finite() && exp >= 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(exp.min(1e11)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.sig", b64.encode(r#"{"alg":"HS256"}"#), b64.encode(payload))
    }

    #[test]
    fn reads_exp_from_a_jwt_and_nothing_from_anything_else() {
        assert_eq!(
            expiry(&jwt(r#"{"sub":"ann","exp":1700000000}"#)),
            Some(UNIX_EPOCH + Duration::from_secs(1700000000))
        );
        assert_eq!(expiry(&jwt(r#"{"exp":1700000000.5}"#)), Some(UNIX_EPOCH + Duration::from_millis(1700000000500)));
        for not in [
            jwt(r#"{"sub":"ann"}"#),
            jwt(r#"{"exp":"soon"}"#),
            jwt(r#"{"exp":-1}"#),
            jwt("not json"),
            "an-api-key".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            "a.!!!.c".into(),
        ] {
            assert_eq!(expiry(&not), None, "{not}");
        }
        // With padding, too.
        let padded = format!("x.{}.y", base64::engine::general_purpose::URL_SAFE.encode(r#"{"exp":10}"#));
        assert_eq!(expiry(&padded), Some(UNIX_EPOCH + Duration::from_secs(10)));
    }

    #[test]
    fn refreshes_ahead_of_the_expiry_by_a_margin() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let after = |secs: u64| refresh_after(now + Duration::from_secs(secs), now);
        assert_eq!(after(3600), Duration::from_secs(3240), "10% of an hour");
        assert_eq!(after(30), Duration::from_secs(25), "at least 5 s ahead");
        assert_eq!(after(6), Duration::from_secs(3), "at most half the life");
        assert_eq!(after(1), MIN_REFRESH, "not sooner than a second");
        assert_eq!(refresh_after(now - Duration::from_secs(5), now), MIN_REFRESH, "already expired");
    }
}
