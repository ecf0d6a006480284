//! The gateway's policy: scopes, rates, device tokens and their claims.
use super::*;

fn hex(d: [u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn headers(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    h
}

fn policy(rate: f64) -> GatewayPolicy {
    let settings = AuthSettings {
        api_keys: vec![
            format!("pusher:{}:publish", hex(digest(b"k-pub"))),
            format!("ops:{}:admin", hex(digest(b"k-admin"))),
            format!("reader:{}:presence,profile", hex(digest(b"k-read"))),
            // A key with a limit of its own: 2 requests/s, 3 at once.
            format!("batcher:{}:publish:2/3", hex(digest(b"k-batch"))),
            // And one with none, whatever the default.
            format!("bulk:{}:publish:0", hex(digest(b"k-bulk"))),
        ],
        api_key_rate: Limit::per_second(rate),
        ..Default::default()
    };
    GatewayPolicy::new(&settings).unwrap().unwrap()
}

#[test]
fn scopes_decide_per_method() {
    let p = policy(0.0);
    let code = |token: &str, method: &str| p.authorize(method, &headers(token)).err().map(|s| s.code());
    assert_eq!(code("k-pub", "/push.v1.PushGateway/PushToAll"), None);
    assert_eq!(code("k-pub", "/push.v1.PushGateway/GetProfile"), Some(tonic::Code::PermissionDenied));
    assert_eq!(code("k-pub", "/push.v1.PushGateway/Subscribe"), Some(tonic::Code::PermissionDenied));
    assert_eq!(code("k-read", "/push.v1.PushGateway/GetProfile"), None);
    assert_eq!(code("k-read", "/push.v1.PushGateway/Login"), None);
    assert_eq!(code("k-read", "/push.v1.PushGateway/JoinGroup"), Some(tonic::Code::PermissionDenied));
    assert_eq!(code("k-admin", "/push.v1.PushGateway/Subscribe"), None);
    assert_eq!(code("k-admin", "/push.v1.PushGateway/Anything"), None);
    assert_eq!(code("k-pub", "/push.v1.PushGateway/Anything"), Some(tonic::Code::PermissionDenied));
    assert_eq!(code("nope", "/push.v1.PushGateway/PushToAll"), Some(tonic::Code::Unauthenticated));
}

#[test]
fn a_key_over_its_rate_is_refused() {
    let p = policy(5.0);
    let call = || p.authorize("/push.v1.PushGateway/PushToAll", &headers("k-pub"));
    let refused = (0..20).filter(|_| call().is_err()).count();
    assert!(refused >= 14, "{refused} of 20 refused");
    let err = call().unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("--api-key-rate"));
    // Other keys have their own budget.
    assert!(p.authorize("/push.v1.PushGateway/PushToAll", &headers("k-admin")).is_ok());
}

#[test]
fn a_refusal_says_which_limit_and_when_to_retry() {
    use tonic_types::StatusExt;
    let p = policy(5.0);
    let err = (0..20).find_map(|_| p.authorize("/push.v1.PushGateway/PushToAll", &headers("k-pub")).err()).unwrap();
    let details = err.get_error_details();
    let retry = details.retry_info().expect("RetryInfo").retry_delay.expect("a delay");
    // One token refills in 1/5 s.
    assert!(retry > Duration::ZERO && retry <= Duration::from_millis(201), "{retry:?}");
    let quota = details.quota_failure().expect("QuotaFailure");
    assert_eq!(quota.violations[0].subject, "api_key:pusher");
    assert!(quota.violations[0].description.contains("5 requests/s"), "{:?}", quota.violations);
}

#[test]
fn a_key_may_carry_its_own_limit() {
    let p = policy(1000.0);
    let call = |key: &str| p.authorize("/push.v1.PushGateway/PushToAll", &headers(key));
    // A burst of 3, then refused, whatever the default.
    let passed = (0..10).filter(|_| call("k-batch").is_ok()).count();
    assert!((3..=4).contains(&passed), "{passed} of 10 passed");
    let err = call("k-batch").unwrap_err();
    assert!(err.message().contains("2 requests/s with bursts of 3 (the key's spec)"), "{}", err.message());
    // Limit 0: never refused, even with a tiny default.
    let tight = policy(1.0);
    assert!((0..1000).all(|_| tight.authorize("/push.v1.PushGateway/PushToAll", &headers("k-bulk")).is_ok()));
}

#[test]
fn limits_parse() {
    assert_eq!(Limit::parse("100"), Some(Limit { rate: 100.0, burst: 100.0 }));
    assert_eq!(Limit::parse("0.5"), Some(Limit { rate: 0.5, burst: 1.0 }));
    assert_eq!(Limit::parse("100/500"), Some(Limit { rate: 100.0, burst: 500.0 }));
    for bad in ["", "-1", "x", "10/0", "10/", "NaN", "inf", "1/2/3"] {
        assert_eq!(Limit::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn bad_key_specs_are_refused() {
    for spec in [
        "x",
        "a:b:publish",
        &format!("a b:{}:publish", hex(digest(b"x"))),
        &format!("a:{}:root", hex(digest(b"x"))),
        &format!("a:{}:publish:fast", hex(digest(b"x"))),
    ] {
        let s = AuthSettings { api_keys: vec![spec.to_string()], ..Default::default() };
        assert!(GatewayPolicy::new(&s).is_err(), "{spec}");
    }
    let twice = format!("a:{}:publish", hex(digest(b"x")));
    let s = AuthSettings { api_keys: vec![twice.clone(), twice.replace("a:", "b:")], ..Default::default() };
    assert!(GatewayPolicy::new(&s).is_err(), "the same secret twice");
}

const SECRET: &str = "a-device-token-secret-of-32-bytes-or-more";

/// A policy that verifies HS256 device tokens with `SECRET`, `leeway` 30 s, and
/// requires `aud` "push" and `iss` "auth.example" when `claims_configured`.
fn device_policy(claims_configured: bool) -> GatewayPolicy {
    device_policy_at(claims_configured, 0.0)
}

/// Like `device_policy`, with `device_rate` calls per second per user.
fn device_policy_at(claims_configured: bool, device_rate: f64) -> GatewayPolicy {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("push-gateway-auth-{}-{n}", std::process::id()));
    std::fs::write(&path, SECRET).unwrap();
    let settings = AuthSettings {
        jwt_keys: vec![format!("hs:HS256:{}", path.display())],
        jwt_audience: claims_configured.then(|| "push".into()),
        jwt_issuer: claims_configured.then(|| "auth.example".into()),
        jwt_leeway: Duration::from_secs(30),
        device_rate,
        ..Default::default()
    };
    let policy = GatewayPolicy::new(&settings);
    let _ = std::fs::remove_file(&path);
    policy.unwrap().unwrap()
}

#[derive(serde::Serialize)]
struct TestClaims {
    sub: &'static str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Claims every check passes: for "ann", good for ten minutes, the configured aud/iss.
fn good() -> TestClaims {
    TestClaims { sub: "ann", exp: now() + 600, aud: Some("push"), iss: Some("auth.example"), nbf: None }
}

fn sign(claims: &TestClaims) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), claims, &key).unwrap()
}

/// What `policy` says of a Subscribe with `claims`: Ok, or the refusal's message.
fn subscribe(policy: &GatewayPolicy, claims: &TestClaims) -> Result<(), String> {
    let headers = headers(&sign(claims));
    match policy.authorize("/push.v1.PushGateway/Subscribe", &headers) {
        Ok(Identity::Device { user, .. }) if user == "ann" => Ok(()),
        Ok(other) => Err(format!("unexpected identity {other:?}")),
        Err(s) if s.code() == tonic::Code::Unauthenticated => Err(s.message().to_owned()),
        Err(s) => Err(format!("unexpected status {s:?}")),
    }
}

#[test]
fn configured_audience_and_issuer_are_required_not_only_checked() {
    let p = device_policy(true);
    assert_eq!(subscribe(&p, &good()), Ok(()));
    let no_aud = TestClaims { aud: None, ..good() };
    assert_eq!(subscribe(&p, &no_aud), Err("invalid device token: missing claim aud".into()));
    let no_iss = TestClaims { iss: None, ..good() };
    assert_eq!(subscribe(&p, &no_iss), Err("invalid device token: missing claim iss".into()));
    let wrong_aud = TestClaims { aud: Some("other"), ..good() };
    assert_eq!(subscribe(&p, &wrong_aud), Err("invalid device token: wrong audience".into()));
    let wrong_iss = TestClaims { iss: Some("evil.example"), ..good() };
    assert_eq!(subscribe(&p, &wrong_iss), Err("invalid device token: wrong issuer".into()));

    // Without --jwt-audience / --jwt-issuer neither claim is needed, and any is taken.
    let p = device_policy(false);
    assert_eq!(subscribe(&p, &TestClaims { aud: None, iss: None, ..good() }), Ok(()));
    assert_eq!(subscribe(&p, &TestClaims { aud: Some("other"), iss: Some("x"), ..good() }), Ok(()));
}

#[test]
fn not_before_is_checked_with_the_leeway_of_expiry() {
    let p = device_policy(true);
    // The leeway is 30 s, both ways.
    let early = TestClaims { nbf: Some(now() + 120), ..good() };
    assert_eq!(subscribe(&p, &early), Err("invalid device token: not valid yet".into()));
    let skewed = TestClaims { nbf: Some(now() + 10), ..good() };
    assert_eq!(subscribe(&p, &skewed), Ok(()));
    assert_eq!(subscribe(&p, &TestClaims { nbf: Some(now() - 60), ..good() }), Ok(()));
    let expired = TestClaims { exp: now() - 120, ..good() };
    assert_eq!(subscribe(&p, &expired), Err("invalid device token: expired".into()));
    let just_expired = TestClaims { exp: now() - 10, ..good() };
    assert_eq!(subscribe(&p, &just_expired), Ok(()));
}

#[test]
fn device_calls_are_rate_limited_per_user() {
    let p = device_policy_at(true, 5.0);
    let refused = (0..20).filter(|_| subscribe(&p, &good()).is_err()).count();
    assert!(refused >= 14, "{refused} of 20 refused");
    let err = p.authorize("/push.v1.PushGateway/Ack", &headers(&sign(&good()))).unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("--device-rate"), "{err:?}");
    // Another user has a budget of its own.
    let bob = TestClaims { sub: "bob", ..good() };
    assert!(p.authorize("/push.v1.PushGateway/Subscribe", &headers(&sign(&bob))).is_ok());
}

#[test]
fn device_calls_act_only_for_the_token_user() {
    let ann = Identity::Device { user: "ann".into(), until: u64::MAX };
    assert_eq!(device_user(Some(&ann), "ann").unwrap(), "ann");
    assert_eq!(device_user(Some(&ann), "").unwrap(), "ann");
    assert_eq!(device_user(Some(&ann), "bob").unwrap_err().code(), tonic::Code::PermissionDenied);
    let admin = Identity::Backend { key: "ops".into(), admin: true };
    assert_eq!(device_user(Some(&admin), "bob").unwrap(), "bob");
    assert_eq!(device_user(None, "bob").unwrap(), "bob");
}

/// Reloading the credential files keeps a key's spent budget (it neither refills nor
/// empties), unless the key's limit changed.
#[test]
fn a_reloaded_policy_keeps_the_budgets_of_unchanged_keys() {
    let old = policy(1000.0);
    let call = |p: &GatewayPolicy, key: &str| p.authorize("/push.v1.PushGateway/PushToAll", &headers(key));
    while call(&old, "k-batch").is_ok() {} // the burst of 3 spent
    let reloaded = policy(1000.0);
    reloaded.carry_over(&old);
    assert!(call(&reloaded, "k-batch").is_err(), "the spent budget came along");
    assert!(call(&reloaded, "k-pub").is_ok(), "other keys as they were");
    // A key whose limit changed starts afresh with its new limit.
    let mut settings_keys = vec![format!("batcher:{}:publish:2/5", hex(digest(b"k-batch")))];
    settings_keys.push(format!("pusher:{}:publish", hex(digest(b"k-pub"))));
    let bigger = GatewayPolicy::new(&AuthSettings { api_keys: settings_keys, ..Default::default() }).unwrap().unwrap();
    bigger.carry_over(&old);
    assert!(call(&bigger, "k-batch").is_ok(), "a new limit, a new budget");
}
