//! Logging: `RUST_LOG` filters (default `info`), `LOG_FORMAT=json` for machines,
//! anything else for humans.
use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = fmt().with_env_filter(filter).with_target(false);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
