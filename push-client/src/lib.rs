//! A device client of `push.v1`: it receives what backends push to a device and keeps
//! the promises of docs/DELIVERY.md on the device's side, so apps do not hand-build them:
//! cursors per history and resume with them, no message twice, gaps and groups left
//! told as events, acks that never go back, token refresh ahead of expiry, and
//! reconnects with jittered backoff across gateway replicas.
//!
//! # Layout
//!
//! Three layers, each usable on its own:
//!
//! - [`Cursors`] (`cursors.rs`): the pure position tracker: per history the epoch of the
//!   last `HistoryState` and the id of the last message; drops duplicates, says what a
//!   state means ([`Change`]), exports the cursors to resume from and to acknowledge.
//!   Names: [`History`] and [`MessageId`] (`history.rs`).
//! - [`Subscription`] (`subscription.rs`): one `Subscribe` stream, opened once with a
//!   token and cursors, read item by item.
//! - [`Client`] and [`Events`] (`client.rs`): the long-running client built on both:
//!   [`Client::builder`] → [`Builder::connect`] gives the handle (cursors, acks, close)
//!   and the events ([`Event`]), whose [`Events::recv`] drives everything. Helpers:
//!   `token.rs` ([`TokenSource`], reading a JWT's `exp`), `backoff.rs`, `error.rs`.
//!
//! # Example
//!
//! ```no_run
//! use push_client::{Client, Event};
//!
//! # async fn fetch_token_from_my_backend() -> Result<String, std::io::Error> { Ok(String::new()) }
//! # fn load() -> Vec<push_proto::push::v1::Cursor> { vec![] }
//! # fn save(_: Vec<push_proto::push::v1::Cursor>) {}
//! # async fn resync(_: &push_client::History) {}
//! # async fn run() -> Result<(), push_client::Error> {
//! let (client, mut events) = Client::builder(["https://push-1.example.com", "https://push-2.example.com"])
//!     .device("phone-1234")
//!     .token_source(|| fetch_token_from_my_backend())
//!     .cursors(load())
//!     .connect()?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Message(m) => println!("{} {}", m.topic, String::from_utf8_lossy(&m.payload)),
//!         Event::Gap(history) => resync(&history).await,
//!         Event::Stopped { status, resync: Some(history) } => eprintln!("resync {history}: {status:?}"),
//!         other => println!("{other:?}"),
//!     }
//!     if events.buffered() == 0 {
//!         save(client.cursors());
//!         let _ = client.ack_all().await; // retried with the next batch if it fails
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # What the client does, and why
//!
//! **Cursors are what the app was handed.** [`Client::cursors`] holds the position of
//! each message [`Events::recv`] has returned, not of messages received but still
//! buffered, so cursors that are persisted (or acknowledged) after handling never skip
//! a message the app did not see, even if it crashes. Reconnects resume from them.
//! Persist them (they are plain `push.v1.Cursor`s) and give them back with
//! [`Builder::cursors`] after a restart.
//!
//! **Never a message twice, never out of order** within a history: the gateway sends
//! none twice on one stream; across streams (a reconnect, a token refresh's overlap)
//! [`Cursors`] drops any id that is not after the last one of its history and epoch.
//! There is no order across histories (an inbox message and a broadcast one).
//!
//! **Gaps are events.** `CONTINUITY_GAP` becomes [`Event::Gap`]: what follows is
//! complete, what came before it was lost (trimmed beyond the retention, expired, or the
//! history started over), and the app resyncs that history from its backend (or
//! `ListHistory`). A continuity this client does not know is reported as a gap. With
//! [`Builder::strict_resume`] the gateway refuses such a resume instead and the client
//! stops, naming the history ([`Event::Stopped`] `resync`). `CONTINUITY_LEFT` becomes
//! [`Event::Left`] and the group's cursor is forgotten.
//!
//! **When a stream ends** (or cannot be opened):
//!
//! | status | meaning (docs/DELIVERY.md) | the client |
//! |---|---|---|
//! | UNAVAILABLE | a replica draining or shutting down, a Disconnect with reconnect, the stream's maximum age, a lost connection | reconnects after a backoff, to the next gateway, with its cursors |
//! | RESOURCE_EXHAUSTED | the device fell behind (queue overflow), or its user has too many streams | the same |
//! | UNAUTHENTICATED | the token expired (or a backend logged the device out) | reconnects at once with a fresh token; stops if that one is refused too |
//! | ABORTED | replaced by a newer stream of the same device | stops: the newer stream is the device's |
//! | PERMISSION_DENIED | a Disconnect without reconnect (a ban), or a token of another user | stops |
//! | INVALID_ARGUMENT | a request that will not get better (a bad device id, a token that is not a header) | stops |
//! | FAILED_PRECONDITION | a strict resume that cannot be honoured | stops, naming the history to resync |
//! | anything else | e.g. a stream ended without a status, DEADLINE_EXCEEDED, INTERNAL | reconnects after a backoff |
//!
//! Each end is an [`Event::Disconnected`] (with the wait before the next attempt) or
//! the final [`Event::Stopped`]; each new stream is an [`Event::Connected`].
//!
//! **Tokens.** The [`TokenSource`] is asked before the first attempt, ahead of each
//! token's expiry, and after a refusal. The expiry is the JWT's `exp`, read without
//! verifying (the gateway verifies); the refresh comes a margin ahead of it: 10% of the
//! token's remaining life, at least 5 s, at most half of it, and never sooner than a
//! second after the last one. A refresh is make-before-break: a second stream opens
//! with the fresh token and the current cursors, then the first is dropped, so nothing
//! is missed and the overlap is deduplicated (the gateway keeps up to
//! `--max-streams-per-device` streams per device, 4 by default, so the two coexist).
//! A refresh that fails leaves the stream as it is and is tried again after a backoff;
//! if the token expires meanwhile, the gateway ends the stream and the client
//! reconnects with a fresh token. A token that is not a JWT with an `exp` (an API key)
//! is used until refused. Refreshes go by this device's clock: one far behind the
//! auth service's sees its stream ended as expired and reconnects, losing nothing.
//!
//! **Gateways and backoff.** The client starts with the first gateway (put the
//! nearest first) and moves to the next at each reconnect, so a device of a replica
//! that went away lands on another at once. The wait before the n-th attempt in a row
//! is random in `[0, min(max, initial × 2ⁿ)]` ("full jitter": a replica's devices come
//! back spread out, not all at once), 500 ms and 30 s by default; it starts over after
//! a stream that stayed up at least `max`. A refused token is retried at once.
//!
//! **Acks** ([`Client::ack_all`], [`Client::ack`]) send `push.v1.Ack` with the device's
//! cursors and the current token, only for histories whose position moved since the
//! last ack, so an ack never goes back and a repeated one costs nothing. Ack after
//! handling a batch ([`Events::buffered`] `== 0`), not after every message.
//!
//! **Nothing runs in the background.** The client is driven by [`Events::recv`]: keep
//! one task awaiting it. An app that stops reading is a slow device: the gateway ends
//! its stream (RESOURCE_EXHAUSTED) and the client resumes when read again. So the
//! client costs no task or buffer of its own, and the position of what the app has
//! handled is exact. [`Client::close`] ends it from anywhere.
//!
//! **TLS**: give `https://` URLs (tonic uses the roots of whichever `tls-*-roots`
//! feature the app enables) or an [`tonic::transport::Endpoint`] with its own
//! `tls_config`, or a ready [`tonic::transport::Channel`] ([`Gateway`]).

mod backoff;
mod client;
mod cursors;
mod error;
mod history;
mod subscription;
mod token;

pub use client::{Builder, Client, Event, Events, Gateway};
pub use cursors::{Applied, BadCursor, Change, Cursors};
pub use error::Error;
pub use history::{BadHistory, BadMessageId, History, MessageId};
pub use subscription::Subscription;
pub use token::{BoxError, TokenFuture, TokenSource};
