//! Credentials that change without a restart: the API key file and the device-token
//! key files are read again every `--credentials-reload-interval`, and when what they
//! hold changed, the policy is rebuilt from them and swapped in. A file that no longer
//! parses (half-written, a typo) is logged and the policy in force is kept.
use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use push_common::auth::{Authorize, Identity};
use tonic::{Status, codegen::http};

use super::{AuthSettings, GatewayPolicy};

/// The policy in force, swapped whole when the credential files change.
pub struct Reloading {
    current: RwLock<Arc<GatewayPolicy>>,
}

impl Reloading {
    pub fn new(policy: GatewayPolicy) -> Arc<Reloading> {
        Arc::new(Reloading { current: RwLock::new(Arc::new(policy)) })
    }

    fn current(&self) -> Arc<GatewayPolicy> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Watches the files `settings` reads every `every`; runs until aborted. `settings`
    /// reads the flags and files afresh each time it is called.
    pub fn watch<F>(self: &Arc<Self>, every: Duration, files: Vec<PathBuf>, settings: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Result<AuthSettings, push_common::Error> + Send + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move {
            let mut seen = fingerprint(&files);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = fingerprint(&files);
                if now == seen {
                    continue;
                }
                match settings().and_then(|s| GatewayPolicy::new(&s)) {
                    Ok(Some(policy)) => {
                        policy.carry_over(&this.current());
                        *this.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
                        tracing::info!("credential files changed: API keys and device-token keys reloaded");
                        seen = now;
                    }
                    // Every credential gone: serving open is never the answer to an edit.
                    Ok(None) => tracing::warn!("credential files now configure no key; keeping the previous ones"),
                    Err(e) => {
                        tracing::warn!(error = %e, "credential files changed but do not load; keeping the previous ones")
                    }
                }
            }
        })
    }
}

/// What the files hold now (a digest; a missing file counts as its absence).
fn fingerprint(files: &[PathBuf]) -> Vec<u8> {
    let mut all = Vec::new();
    for f in files {
        all.extend(f.as_os_str().as_encoded_bytes());
        match std::fs::read(f) {
            Ok(bytes) => {
                all.push(1);
                all.extend((bytes.len() as u64).to_be_bytes());
                all.extend(bytes);
            }
            Err(_) => all.push(0),
        }
    }
    push_common::auth::digest(&all).to_vec()
}

impl Authorize for Reloading {
    fn authorize(&self, method: &str, headers: &http::HeaderMap) -> Result<Identity, Status> {
        self.current().authorize(method, headers)
    }
}
