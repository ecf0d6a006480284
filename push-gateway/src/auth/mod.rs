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
//! - Each API key has a request budget per second and a burst (a token bucket), set per
//!   key in its spec or by `--api-key-rate`; past it, calls get RESOURCE_EXHAUSTED with
//!   `RetryInfo` (when a call would pass) and `QuotaFailure` (which limit) details.
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

mod limits;
pub use limits::Limit;
use limits::{Bucket, DeviceLimit, over_limit};

/// What a backend key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Publish = 1,
    Presence = 2,
    Profile = 4,
    Groups = 8,
    Admin = 16,
    History = 32,
}

impl Scope {
    const ALL: [Scope; 6] =
        [Scope::Publish, Scope::Presence, Scope::Profile, Scope::Groups, Scope::Admin, Scope::History];

    fn name(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Presence => "presence",
            Scope::Profile => "profile",
            Scope::Groups => "groups",
            Scope::Admin => "admin",
            Scope::History => "history",
        }
    }
}

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Scope(Scope),
    /// A device call: a device token (or an admin key).
    Device,
    /// A device token (acting for its user), or a key with this scope.
    DeviceOrScope(Scope),
}

/// The need of each `push.v1.PushGateway` method; anything else needs `admin`.
pub fn need(method: &str) -> Need {
    let name = method.strip_prefix("/push.v1.PushGateway/").unwrap_or("");
    match name {
        "Subscribe" | "Ack" => Need::Device,
        "PushToAll" | "PushToUsers" | "PushToGroup" | "Push" | "PushBatch" | "GetDeliveryStatus" => {
            Need::Scope(Scope::Publish)
        }
        "Login" | "Heartbeat" | "Logout" | "Disconnect" | "GetPresence" | "ListOnlineUsers" | "CountOnlineUsers"
        | "WatchPresence" => Need::Scope(Scope::Presence),
        "ListHistory" => Need::DeviceOrScope(Scope::History),
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
    limit: Limit,
    /// Where the limit came from, for the refusal's `QuotaFailure`.
    limit_source: &'static str,
    bucket: Mutex<Bucket>,
}

/// Parses `NAME:SHA256HEX:SCOPE[,SCOPE…][:RATE[/BURST]]`; without a rate, `default`.
fn parse_key(spec: &str, default: Limit) -> Result<ApiKey, Error> {
    let bad =
        |why: &str| Error::Config(format!("API key {spec:?}: {why} (expected NAME:SHA256HEX:SCOPE,…[:RATE[/BURST]])"));
    let mut parts = spec.trim().splitn(4, ':');
    let (Some(name), Some(hex), Some(scopes)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("not three fields"));
    };
    let (limit, limit_source) = match parts.next() {
        None => (default, "--api-key-rate"),
        Some(l) => (
            Limit::parse(l)
                .ok_or_else(|| bad(&format!("the limit {l:?} is not RATE or RATE/BURST (numbers ≥ 0, burst ≥ 1)")))?,
            "the key's spec",
        ),
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
    let bucket = Mutex::new(Bucket::full(limit, Instant::now()));
    Ok(ApiKey { name: name.to_owned(), digest, scopes: bits, limit, limit_source, bucket })
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
    /// Requests per API key without a limit of its own; a rate of 0 for no limit.
    pub api_key_rate: Limit,
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
    devices: DeviceLimit,
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
            devices: DeviceLimit::new(Limit::per_second(s.device_rate)),
        }))
    }

    /// Takes over `old`'s rate-limit budgets where the limit is the same (a key of the
    /// same name, digest and limit; the device limit), so reloading the credential files
    /// neither refills nor empties anybody's budget.
    pub fn carry_over(&self, old: &GatewayPolicy) {
        for k in &self.keys {
            if let Some(o) =
                old.keys.iter().find(|o| o.name == k.name && same(&o.digest, &k.digest) && o.limit == k.limit)
            {
                *k.bucket.lock().unwrap_or_else(|e| e.into_inner()) =
                    *o.bucket.lock().unwrap_or_else(|e| e.into_inner());
            }
        }
        self.devices.carry_over(&old.devices);
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
        let taken = key.bucket.lock().unwrap_or_else(|e| e.into_inner()).take(key.limit, Instant::now());
        taken.map_err(|retry| {
            let (name, limit, source) = (&key.name, key.limit, key.limit_source);
            let message = format!("API key {name:?} is over its rate limit of {} ({source})", limit.describe());
            tracing::debug!(key = %name, "API key over its rate limit");
            over_limit(message, format!("api_key:{name}"), format!("{} ({source})", limit.describe()), retry)
        })
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
                Need::Device | Need::DeviceOrScope(_) => {
                    self.devices.spend(&user)?;
                    Ok(Identity::Device { user, until })
                }
                Need::Scope(_) => {
                    Err(Status::permission_denied("a device token may only call Subscribe, Ack and ListHistory"))
                }
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
            Need::Scope(s) | Need::DeviceOrScope(s) if key.scopes & (s as u8 | Scope::Admin as u8) == 0 => {
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

mod reload;
pub use reload::Reloading;

#[cfg(test)]
mod tests;
