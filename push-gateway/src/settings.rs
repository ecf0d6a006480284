//! The gateway's configuration resolved once, at start: every file read, every value
//! checked, every derived setting built, with errors that name the flag. [`crate::serve`]
//! only wires what this returns.
use std::sync::Arc;

use push_common::{BoxError, auth::Authorize, auth::SendBearer, keys::Keys, redis};
use tonic::transport::Channel;

use crate::{auth, config::Config, downstream, push::PushLimits, store::Retention, stream};

/// Everything the gateway runs with.
pub struct Settings {
    /// Lazily connected channels to the internal services (TLS resolved).
    pub presence: Channel,
    pub profile: Channel,
    /// Sends the internal token (if any) with every internal call.
    pub internal_token: SendBearer,
    /// Who may call what; None only with --insecure-no-auth.
    pub policy: Option<Arc<dyn Authorize>>,
    /// The same policy, for reloading its credential files ([`Settings::watch_credentials`]).
    reloading: Option<Arc<auth::Reloading>>,
    pub pool: redis::Pool,
    pub keys: Keys,
    pub retention: Retention,
    pub push: PushLimits,
    pub streams: stream::Settings,
    pub hub: stream::hub::HubConfig,
    /// This replica's id: its presence sessions' owners and its probe channel.
    pub replica: String,
    /// Most open WatchPresence streams per API key.
    pub max_watches: usize,
    /// Largest request the server decodes: the largest payload or batch, and room for
    /// the rest.
    pub max_request_bytes: usize,
}

impl Settings {
    pub fn resolve(config: &Config) -> Result<Settings, BoxError> {
        let presence = downstream::channel(&config.presence_url, config).map_err(|e| format!("--presence-url {e}"))?;
        let profile = downstream::channel(&config.profile_url, config).map_err(|e| format!("--profile-url {e}"))?;
        let token = config.auth.internal_token()?;
        let policy = auth::GatewayPolicy::new(&auth_settings(config)?)?;
        if !config.auth.insecure_no_auth && (token.is_none() || policy.is_none()) {
            return Err("refusing to serve unauthenticated: configure --internal-token-file and API keys (--api-key, \
                        --api-keys-file) or device token keys (--jwt-key), or pass --insecure-no-auth for local \
                        development"
                .into());
        }
        let reloading = policy.map(auth::Reloading::new);
        if config.history_meta_ttl < config.history_max_age {
            return Err("--history-meta-ttl must be at least --history-max-age".into());
        }
        if config.inbox_max_len == 0 || config.history_max_len == 0 {
            return Err("--inbox-max-len and --history-max-len must be at least 1".into());
        }
        Ok(Settings {
            presence,
            profile,
            internal_token: SendBearer::new(token.as_deref())?,
            policy: reloading.clone().map(|p| p as Arc<dyn Authorize>),
            reloading,
            pool: redis::pool(&config.redis)?,
            keys: Keys::new(&config.redis.key_prefix),
            retention: Retention {
                inbox_max_len: config.inbox_max_len,
                history_max_len: config.history_max_len,
                max_age: config.history_max_age,
                meta_ttl: config.history_meta_ttl,
                max_ack_devices: config.max_ack_devices_per_user as usize,
            },
            push: PushLimits {
                max_payload_bytes: config.max_payload_bytes,
                max_users_per_call: config.max_users_per_call,
                max_groups_per_user: config.max_groups_per_user,
                max_page_size: config.max_page_size as usize,
                idempotency_window: config.idempotency_window,
                max_publish_bytes: config.max_publish_bytes,
                max_batch_pushes: config.max_batch_pushes,
            },
            streams: stream::Settings {
                lease: config.stream_lease,
                audit_interval: config.audit_interval,
                limits: stream::Limits { messages: config.stream_queue_messages, bytes: config.stream_queue_bytes },
                max_groups: config.max_groups_per_user,
                max_per_device: config.max_streams_per_device as usize,
                max_per_user: config.max_streams_per_user as usize,
                max_age: (!config.max_stream_age.is_zero()).then_some(config.max_stream_age),
            },
            hub: stream::hub::HubConfig {
                redis: config.redis.clone(),
                connect_timeout: config.redis.timeout,
                probe_interval: config.hub_probe_interval,
                subscribe_timeout: config.redis.timeout * 2,
            },
            replica: uuid::Uuid::now_v7().simple().to_string(),
            max_watches: config.max_watchers_per_key as usize,
            // A batch cannot publish more than --max-publish-bytes, so no larger request
            // could succeed.
            max_request_bytes: config.max_payload_bytes.max(config.max_publish_bytes) + (1 << 20),
        })
    }
}

impl Settings {
    /// Reloads the policy from its files every `--credentials-reload-interval` (none
    /// without a policy or with 0), until the returned task is aborted.
    pub fn watch_credentials(&self, config: &Config) -> Option<tokio::task::JoinHandle<()>> {
        let reloading = self.reloading.as_ref().filter(|_| !config.credentials_reload_interval.is_zero())?;
        let c = config.clone();
        Some(reloading.watch(config.credentials_reload_interval, credential_files(config), move || auth_settings(&c)))
    }
}

/// The files the policy reads: the API key file and each device-token key's file.
fn credential_files(config: &Config) -> Vec<std::path::PathBuf> {
    let jwt = config.jwt_keys.iter().filter_map(|k| k.trim().splitn(3, ':').nth(2)).map(std::path::PathBuf::from);
    config.api_keys_file.iter().cloned().chain(jwt).collect()
}

/// The policy's settings: the flags plus the keys file.
fn auth_settings(config: &Config) -> Result<auth::AuthSettings, push_common::Error> {
    let mut api_keys: Vec<String> = config.api_keys.iter().filter(|k| !k.trim().is_empty()).cloned().collect();
    if let Some(path) = &config.api_keys_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| push_common::Error::Config(format!("--api-keys-file {}: {e}", path.display())))?;
        let lines = text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty());
        api_keys.extend(lines.map(String::from));
    }
    Ok(auth::AuthSettings {
        api_keys,
        jwt_keys: config.jwt_keys.iter().filter(|k| !k.trim().is_empty()).cloned().collect(),
        jwt_issuer: config.jwt_issuer.clone(),
        jwt_audience: config.jwt_audience.clone(),
        jwt_leeway: config.jwt_leeway,
        api_key_rate: auth::Limit::per_second(config.api_key_rate),
        device_rate: config.device_rate,
    })
}
