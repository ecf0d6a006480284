//! One integration-test binary (one link) with a module per area.
mod backend;
mod events;
mod faults;
mod gateway;
mod health;
mod holders;
mod hostile;
mod inbox;
mod metrics;
mod presence;
mod probes;
mod profile;
mod push;
mod redis_tls;
mod security;
mod validation;
mod watch;
