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
/// asks ahead of the expiry and schedules the next refresh from the token's lifetime
/// (`exp - iat`), counted from when it came. Answer within the client's token timeout
/// ([`crate::Builder::token_timeout`], 30 s by default).
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
    /// When it came (monotonic: the device's wall clock may be wrong or change).
    pub received: Instant,
    /// How long after `received` it should be replaced, from its claims; `None` when it
    /// does not say when it expires (not a JWT, or no `exp`): then only a refusal makes
    /// the client fetch another.
    pub refresh_in: Option<Duration>,
    /// When the client fetches the next one (set by the client from `refresh_in`, which
    /// may be pushed back when tokens come already expired).
    pub refresh_at: Option<Instant>,
    /// Whether `refresh_at` was set.
    pub scheduled: bool,
    /// Set once the gateway refused it: fetch another before the next attempt.
    pub refused: bool,
    /// Fetched because the one before was refused: if the gateway refuses this one too,
    /// the client stops.
    pub after_refusal: bool,
}

impl Token {
    pub fn new(value: String, after_refusal: bool) -> Self {
        let refresh_in = claims(&value).map(|(exp, iat)| refresh_in(lifetime(exp, iat, SystemTime::now())));
        Token {
            value: value.into(),
            received: Instant::now(),
            refresh_in,
            refresh_at: None,
            scheduled: false,
            refused: false,
            after_refusal,
        }
    }

    /// Whether to fetch another before using it.
    pub fn stale(&self, now: Instant) -> bool {
        self.refused || self.refresh_at.is_some_and(|at| now >= at)
    }
}

/// A refresh due sooner than this after the token came means the token is (nearly)
/// expired already: the next refresh is backed off instead.
pub(crate) const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Refresh at least this long before the end of the token's life...
const MIN_MARGIN: Duration = Duration::from_secs(5);

/// A token's lifetime: `exp - iat` when it says when it was issued (so a device clock
/// that is off does not matter), else `exp - now` by the device's clock.
pub(crate) fn lifetime(exp: SystemTime, iat: Option<SystemTime>, now: SystemTime) -> Duration {
    exp.duration_since(iat.unwrap_or(now)).unwrap_or_default()
}

/// How long after it came to refresh a token that lives `life`: a margin of 10% of its
/// life, at least 5 s, ahead of its end. Below [`MIN_REFRESH`] (zero for a token that
/// is expired already), the client backs off instead.
pub(crate) fn refresh_in(life: Duration) -> Duration {
    life.saturating_sub((life / 10).max(MIN_MARGIN))
}

/// The `exp` and `iat` claims of a JWT, read without verifying anything (the gateway
/// verifies; the client only needs to know when to ask for the next token). `None`
/// without an `exp`.
pub(crate) fn claims(token: &str) -> Option<(SystemTime, Option<SystemTime>)> {
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
    let time = |name: &str| {
        let t = claims.get(name)?.as_f64()?;
        (t.is_finite() && t >= 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(t.min(1e11)))
    };
    Some((time("exp")?, time("iat")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.sig", b64.encode(r#"{"alg":"HS256"}"#), b64.encode(payload))
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn reads_exp_and_iat_from_a_jwt_and_nothing_from_anything_else() {
        assert_eq!(claims(&jwt(r#"{"sub":"ann","exp":1700000000}"#)), Some((at(1700000000), None)));
        assert_eq!(
            claims(&jwt(r#"{"exp":1700000000.5,"iat":1699999000}"#)),
            Some((UNIX_EPOCH + Duration::from_millis(1700000000500), Some(at(1699999000))))
        );
        assert_eq!(claims(&jwt(r#"{"exp":10,"iat":"then"}"#)), Some((at(10), None)), "a bad iat is none");
        for not in [
            jwt(r#"{"sub":"ann"}"#),
            jwt(r#"{"iat":1700000000}"#),
            jwt(r#"{"exp":"soon"}"#),
            jwt(r#"{"exp":-1}"#),
            jwt("not json"),
            "an-api-key".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            "a.!!!.c".into(),
        ] {
            assert_eq!(claims(&not), None, "{not}");
        }
        // With padding, too.
        let padded = format!("x.{}.y", base64::engine::general_purpose::URL_SAFE.encode(r#"{"exp":10}"#));
        assert_eq!(claims(&padded), Some((at(10), None)));
    }

    /// The lifetime is exp - iat when the token has an iat, whatever the device's
    /// clock says: a device whose clock is an hour ahead of the issuer's still uses an
    /// hour-long token for most of its hour (it did not see it as expired, refreshing
    /// every second).
    #[test]
    fn the_lifetime_comes_from_iat_when_there_is_one() {
        let issued = at(1_000_000);
        let exp = issued + Duration::from_secs(3600);
        let ahead = exp + Duration::from_secs(60);
        assert_eq!(lifetime(exp, Some(issued), ahead), Duration::from_secs(3600));
        assert_eq!(lifetime(exp, None, ahead), Duration::ZERO, "without iat: by the device's clock");
        assert_eq!(lifetime(exp, None, issued + Duration::from_secs(600)), Duration::from_secs(3000));
        assert_eq!(lifetime(issued, Some(exp), issued), Duration::ZERO, "iat after exp");
        let t = Token::new(jwt(r#"{"iat":1000000,"exp":1003600}"#), false);
        assert_eq!(t.refresh_in, Some(Duration::from_secs(3240)));
        assert_eq!(Token::new("api-key".into(), false).refresh_in, None);
    }

    #[test]
    fn refreshes_ahead_of_the_end_by_ten_percent_and_at_least_five_seconds() {
        let after = |secs: u64| refresh_in(Duration::from_secs(secs));
        assert_eq!(after(3600), Duration::from_secs(3240), "10% of an hour");
        assert_eq!(after(30), Duration::from_secs(25), "at least 5 s ahead");
        assert_eq!(after(6), Duration::from_secs(1));
        assert_eq!(after(4), Duration::ZERO, "shorter than the margin: at once (the client backs off)");
        assert_eq!(after(0), Duration::ZERO, "already expired");
    }
}
