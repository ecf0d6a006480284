//! The gateway's policy: backends call with API keys that carry scopes, devices with
//! signed tokens (JWT) naming their user. See docs/SECURITY.md.
//!
//! - API keys are configured as SHA-256 digests, never in plain text, and a presented
//!   key is compared with every configured digest in constant time.
//! - Each RPC needs one scope; `admin` has them all. `Subscribe` and `Ack` are device
//!   calls: a device token for the user they name, or an admin key acting for any user
//!   (debugging with grpcurl).
//! - A device token is a JWT (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384)
//!   with `sub` = the user id and `exp`; `iss` and `aud` are required and checked when
//!   configured; `nbf`, when present, is checked with the same leeway as `exp`.
//!   Several keys may be configured at once (rotation): the token's `kid` picks one, or
//!   every key of the token's algorithm is tried.
//! - Each API key has a request budget per second (a token bucket); past it, calls get
//!   RESOURCE_EXHAUSTED naming the limit.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use push_common::{
    Error,
    auth::{Authorize, Identity, bearer, digest, parse_digest, same},
    validate::id_problem,
};
use tonic::{Status, codegen::http};

/// What a backend key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Publish = 1,
    Presence = 2,
    Profile = 4,
    Groups = 8,
    Admin = 16,
}

impl Scope {
    const ALL: [Scope; 5] = [Scope::Publish, Scope::Presence, Scope::Profile, Scope::Groups, Scope::Admin];

    fn name(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Presence => "presence",
            Scope::Profile => "profile",
            Scope::Groups => "groups",
            Scope::Admin => "admin",
        }
    }
}

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Scope(Scope),
    /// A device call: a device token (or an admin key).
    Device,
}

/// The need of each `push.v1.PushGateway` method; anything else needs `admin`.
pub fn need(method: &str) -> Need {
    let name = method.strip_prefix("/push.v1.PushGateway/").unwrap_or("");
    match name {
        "Subscribe" | "Ack" => Need::Device,
        "PushToAll" | "PushToUsers" | "PushToGroup" | "GetDeliveryStatus" => Need::Scope(Scope::Publish),
        "Login" | "Heartbeat" | "Logout" | "GetPresence" | "ListOnlineUsers" | "CountOnlineUsers" | "WatchPresence" => {
            Need::Scope(Scope::Presence)
        }
        "PutProfile" | "UpdateProfile" | "GetProfile" | "BatchGetProfiles" | "DeleteProfile" => {
            Need::Scope(Scope::Profile)
        }
        "JoinGroup" | "LeaveGroup" | "ListGroupMembers" | "ListUserGroups" => Need::Scope(Scope::Groups),
        _ => Need::Scope(Scope::Admin),
    }
}

/// One configured API key.
struct ApiKey {
    name: String,
    digest: [u8; 32],
    scopes: u8,
    bucket: Mutex<Bucket>,
}

/// A token bucket: `tokens` refill at the key's rate up to one second's worth.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Parses `NAME:SHA256HEX:SCOPE[,SCOPE…]`.
fn parse_key(spec: &str, rate: f64) -> Result<ApiKey, Error> {
    let bad = |why: &str| Error::Config(format!("API key {spec:?}: {why} (expected NAME:SHA256HEX:SCOPE,…)"));
    let mut parts = spec.trim().splitn(3, ':');
    let (Some(name), Some(hex), Some(scopes)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("not three fields"));
    };
    if let Some(p) = id_problem(name) {
        return Err(bad(&format!("the name {p}")));
    }
    let digest = parse_digest(hex).ok_or_else(|| bad("the digest is not 64 hex characters"))?;
    let mut bits = 0;
    for s in scopes.split(',').map(str::trim) {
        let scope = Scope::ALL.iter().find(|x| x.name() == s).ok_or_else(|| bad(&format!("unknown scope {s:?}")))?;
        bits |= *scope as u8;
    }
    let bucket = Mutex::new(Bucket { tokens: rate.max(1.0), at: Instant::now() });
    Ok(ApiKey { name: name.to_owned(), digest, scopes: bits, bucket })
}

/// One key that verifies device tokens.
struct JwtKey {
    kid: String,
    alg: Algorithm,
    key: DecodingKey,
}

/// Parses `KID:ALG:PATH`: an HMAC secret file for HS*, a PEM public key otherwise.
fn parse_jwt_key(spec: &str) -> Result<JwtKey, Error> {
    let bad = |why: String| Error::Config(format!("JWT key {spec:?}: {why} (expected KID:ALG:PATH)"));
    let mut parts = spec.trim().splitn(3, ':');
    let (Some(kid), Some(alg), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("not three fields".into()));
    };
    let alg: Algorithm = alg.parse().map_err(|_| bad(format!("unknown algorithm {alg:?}")))?;
    let bytes = std::fs::read(path).map_err(|e| bad(format!("{path}: {e}")))?;
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let secret = bytes.trim_ascii();
            if secret.len() < 32 {
                return Err(bad("an HMAC secret must be at least 32 bytes".into()));
            }
            DecodingKey::from_secret(secret)
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(&bytes).map_err(|e| bad(e.to_string()))?,
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&bytes).map_err(|e| bad(e.to_string()))?,
        other => return Err(bad(format!("algorithm {other:?} is not supported"))),
    };
    Ok(JwtKey { kid: kid.to_owned(), alg, key })
}

/// Settings of the policy, from the command line.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    pub api_keys: Vec<String>,
    pub jwt_keys: Vec<String>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_leeway: Duration,
    /// Requests per second per API key; 0 for no limit.
    pub api_key_rate: f64,
    /// Device calls (Subscribe, Ack) per second per user; 0 for no limit.
    pub device_rate: f64,
}

/// The gateway's policy.
pub struct GatewayPolicy {
    keys: Vec<ApiKey>,
    jwt: Vec<JwtKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    rate: f64,
    devices: DeviceLimit,
}

/// Device calls per user: one token bucket per user who called lately. Buckets that
/// have refilled are dropped when the map grows, so idle users cost nothing.
struct DeviceLimit {
    rate: f64,
    buckets: Mutex<std::collections::HashMap<String, Bucket>>,
}

/// Users with a bucket before the full ones are dropped.
const DEVICE_BUCKETS_BEFORE_PRUNING: usize = 10_000;

impl DeviceLimit {
    fn spend(&self, user: &str) -> Result<(), Status> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let (rate, burst, now) = (self.rate, self.rate.max(1.0), Instant::now());
        let refilled = |b: &Bucket| (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= DEVICE_BUCKETS_BEFORE_PRUNING && !buckets.contains_key(user) {
            buckets.retain(|_, b| refilled(b) < burst);
        }
        let b = buckets.entry(user.to_owned()).or_insert(Bucket { tokens: burst, at: now });
        b.tokens = refilled(b);
        b.at = now;
        if b.tokens < 1.0 {
            return Err(Status::resource_exhausted(format!(
                "user {user:?} is over the device call rate limit of {rate} requests/s (--device-rate)"
            )));
        }
        b.tokens -= 1.0;
        Ok(())
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

impl GatewayPolicy {
    /// The policy, or None when no credential is configured.
    pub fn new(s: &AuthSettings) -> Result<Option<GatewayPolicy>, Error> {
        let keys = s.api_keys.iter().map(|k| parse_key(k, s.api_key_rate)).collect::<Result<Vec<_>, _>>()?;
        let jwt = s.jwt_keys.iter().map(|k| parse_jwt_key(k)).collect::<Result<Vec<_>, _>>()?;
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.name == k.name || same(&o.digest, &k.digest)) {
                return Err(Error::Config(format!("API key {:?} is configured twice", k.name)));
            }
        }
        if keys.is_empty() && jwt.is_empty() {
            return Ok(None);
        }
        Ok(Some(GatewayPolicy {
            keys,
            jwt,
            issuer: s.jwt_issuer.clone(),
            audience: s.jwt_audience.clone(),
            leeway: s.jwt_leeway,
            rate: s.api_key_rate,
            devices: DeviceLimit { rate: s.device_rate, buckets: Mutex::default() },
        }))
    }

    /// The key whose digest matches; every configured digest is compared.
    fn key(&self, token: &str) -> Option<&ApiKey> {
        let d = digest(token.as_bytes());
        let mut found = None;
        for k in &self.keys {
            if same(&k.digest, &d) {
                found = Some(k);
            }
        }
        found
    }

    /// The user a device token is for, and until when it is good (leeway included).
    fn device(&self, token: &str) -> Result<(String, u64), Status> {
        let invalid = |why: &str| Status::unauthenticated(format!("invalid device token: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        let candidates: Vec<&JwtKey> = match &header.kid {
            Some(kid) => self.jwt.iter().filter(|k| &k.kid == kid && k.alg == header.alg).collect(),
            None => self.jwt.iter().filter(|k| k.alg == header.alg).collect(),
        };
        if candidates.is_empty() {
            return Err(invalid("no configured key for its kid and algorithm"));
        }
        let mut validation = Validation::new(header.alg);
        // The leeway covers clock skew both ways: `exp` in the past and `nbf` in the future.
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        // A configured claim must be present: `set_audience`/`set_issuer` alone only
        // refuse a wrong value, and a token without the claim would pass.
        let mut required = vec!["exp", "sub"];
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let mut last = invalid("bad signature");
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(data) => {
                    if let Some(p) = id_problem(&data.claims.sub) {
                        return Err(invalid(&format!("sub {p}")));
                    }
                    return Ok((data.claims.sub, data.claims.exp.saturating_add(self.leeway.as_secs())));
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::ExpiredSignature => invalid("expired"),
                        K::InvalidAudience => invalid("wrong audience"),
                        K::InvalidIssuer => invalid("wrong issuer"),
                        K::MissingRequiredClaim(c) => invalid(&format!("missing claim {c}")),
                        K::ImmatureSignature => invalid("not valid yet"),
                        _ => invalid("bad signature"),
                    };
                }
            }
        }
        Err(last)
    }

    /// Takes one request from `key`'s budget.
    fn spend(&self, key: &ApiKey) -> Result<(), Status> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut b = key.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.rate.max(1.0));
        b.at = now;
        if b.tokens < 1.0 {
            return Err(Status::resource_exhausted(format!(
                "API key {:?} is over its rate limit of {} requests/s (--api-key-rate)",
                key.name, self.rate
            )));
        }
        b.tokens -= 1.0;
        Ok(())
    }
}

/// A JWT is three base64url parts; an API key is one opaque string without dots.
fn is_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

impl Authorize for GatewayPolicy {
    fn authorize(&self, method: &str, headers: &http::HeaderMap) -> Result<Identity, Status> {
        let token = bearer(headers)?;
        let need = need(method);
        if is_jwt(token) {
            let (user, until) = self.device(token)?;
            return match need {
                Need::Device => {
                    self.devices.spend(&user)?;
                    Ok(Identity::Device { user, until })
                }
                Need::Scope(_) => Err(Status::permission_denied("a device token may only call Subscribe and Ack")),
            };
        }
        let key = self.key(token).ok_or_else(|| Status::unauthenticated("invalid API key"))?;
        let admin = key.scopes & Scope::Admin as u8 != 0;
        match need {
            Need::Device if !admin => {
                return Err(Status::permission_denied(format!(
                    "Subscribe and Ack take a device token (or an admin key); API key {:?} is not admin",
                    key.name
                )));
            }
            Need::Scope(s) if key.scopes & (s as u8 | Scope::Admin as u8) == 0 => {
                return Err(Status::permission_denied(format!(
                    "API key {:?} lacks the {:?} scope this call needs",
                    key.name,
                    s.name()
                )));
            }
            _ => {}
        }
        self.spend(key)?;
        Ok(Identity::Backend { key: key.name.clone(), admin })
    }
}

/// Who a device call is for: the verified device's user (the request may name it or
/// leave it empty; naming another is PERMISSION_DENIED), or the user the request names
/// when an admin key (or no authentication) is in force.
pub fn device_user(identity: Option<&Identity>, requested: &str) -> Result<String, Status> {
    match identity {
        Some(Identity::Device { user, .. }) if requested.is_empty() || requested == user => Ok(user.clone()),
        Some(Identity::Device { user, .. }) => Err(Status::permission_denied(format!(
            "this device token is for user {user:?}; it cannot act for {requested:?}"
        ))),
        _ => Ok(requested.to_owned()),
    }
}

#[cfg(test)]
mod tests {
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
            ],
            api_key_rate: rate,
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
    fn bad_key_specs_are_refused() {
        for spec in [
            "x",
            "a:b:publish",
            &format!("a b:{}:publish", hex(digest(b"x"))),
            &format!("a:{}:root", hex(digest(b"x"))),
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
}
