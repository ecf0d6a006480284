//! Credentials for a system that authenticates: API keys, device-token keys and the
//! internal token, written to files the services read.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{App, fixtures::fixture};

/// The HS256 secret of device-token key `hs1`.
pub const HS_SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";
/// The HS256 secret of device-token key `hs2` (the next one, for rotation).
pub const HS_SECRET_2: &str = "the-next-hmac-secret-for-rotation-0001";
/// The token the gateway sends to the internal services.
pub const INTERNAL_TOKEN: &str = "internal-token-for-the-tests-0123";

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A directory with the secrets the services read, and the flags that use them:
/// API keys `k-publish`, `k-presence`, `k-profile`, `k-groups`, `k-history` (each with
/// its scope) and `k-admin`; device-token keys `hs1` and `hs2` (HS256), `rs1` (RS256) and `es1`
/// (ES256) with audience `push` and issuer `auth.example`. The directory is removed on
/// drop: keep the value alive as long as the system.
pub struct Credentials {
    dir: PathBuf,
    /// The file holding [`INTERNAL_TOKEN`].
    pub internal_token_file: String,
    gateway: Vec<String>,
}

impl Credentials {
    /// Writes the secrets; `extra` are more gateway flags to go with them.
    pub fn new(extra: &[&str]) -> Credentials {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("push-sec-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.to_string_lossy().into_owned()
        };
        let internal_token_file = write("internal", INTERNAL_TOKEN);
        let hs1 = write("hs1", HS_SECRET);
        let hs2 = write("hs2", HS_SECRET_2);
        let api_key = |name: &str, secret: &str, scopes: &str| {
            format!("{name}:{}:{scopes}", hex(&push_common::auth::digest(secret.as_bytes())))
        };
        let mut gateway = vec!["--internal-token-file".to_string(), internal_token_file.clone()];
        for (name, secret, scopes) in [
            ("pusher", "k-publish", "publish"),
            ("watcher", "k-presence", "presence"),
            ("profiler", "k-profile", "profile"),
            ("grouper", "k-groups", "groups"),
            ("ops", "k-admin", "admin"),
            ("historian", "k-history", "history"),
        ] {
            gateway.extend(["--api-key".to_string(), api_key(name, secret, scopes)]);
        }
        for key in [
            format!("hs1:HS256:{hs1}"),
            format!("hs2:HS256:{hs2}"),
            format!("rs1:RS256:{}", fixture("rsa-test.pub")),
            format!("es1:ES256:{}", fixture("ec-test.pub")),
        ] {
            gateway.extend(["--jwt-key".to_string(), key]);
        }
        gateway.extend(["--jwt-audience", "push", "--jwt-issuer", "auth.example"].map(String::from));
        gateway.extend(extra.iter().map(|s| s.to_string()));
        Credentials { dir, internal_token_file, gateway }
    }

    /// A file of the credentials' directory (e.g. "hs1", the secret of key hs1), to
    /// change what a running gateway reads.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The flags of presence-svc and profile-svc: the internal token they accept.
    pub fn internal_flags(&self) -> [&str; 2] {
        ["--internal-token-file", &self.internal_token_file]
    }

    /// The gateway's flags: every key above, the internal token, and the extra flags.
    pub fn gateway_flags(&self) -> Vec<&str> {
        self.gateway.iter().map(String::as_str).collect()
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The claims of a device token.
#[derive(serde::Serialize)]
pub struct Claims<'a> {
    pub sub: &'a str,
    pub exp: u64,
    pub aud: &'a str,
    pub iss: &'a str,
}

/// A device token for `sub` signed with `hs1`, good for ten minutes, with the audience
/// and issuer the gateway expects.
pub fn device_token(sub: &str) -> String {
    device_token_expiring_at(sub, unix_now() + 600)
}

/// Seconds since the Unix epoch, as a token's `exp` counts them.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Like [`device_token`], expiring at `exp` (seconds since the epoch; in the past for
/// an expired one).
pub fn device_token_expiring_at(sub: &str, exp: u64) -> String {
    let claims = Claims { sub, exp, aud: "push", iss: "auth.example" };
    let header =
        jsonwebtoken::Header { kid: Some("hs1".into()), ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256) };
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes())).unwrap()
}

/// A system with every credential configured, plus `extra` gateway flags.
pub async fn secure_app(extra: &[&str]) -> (App, Credentials) {
    let creds = Credentials::new(extra);
    let app = App::builder().credentials(&creds).start().await;
    (app, creds)
}

/// Lower-case hex, as `--api-key` takes a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
