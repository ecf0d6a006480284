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
//! - [`Client`] and [`Events`] (`client/`): the long-running client built on both:
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
//!     // After a batch (a gap is handled above, resynced before this): persist and ack.
//!     // An ack that fails (not connected yet, a gateway going away) must not end the
//!     // loop: the next one acknowledges it too.
//!     if events.buffered() == 0 {
//!         save(client.cursors());
//!         if let Err(e) = client.ack_all().await {
//!             eprintln!("ack: {e}");
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # What the client does, and why
//!
//! **Cursors are what the app was handed.** [`Client::cursors`] holds the position of
//! each message [`Events::recv`] has returned (and of each state it applied: a history
//! followed from now, a gap's point), not of messages received but still buffered, so
//! cursors that are persisted after handling never skip a message the app did not see,
//! even if it crashes. Reconnects resume from them. Persist them (they are plain
//! `push.v1.Cursor`s) and give them back with [`Builder::cursors`] after a restart;
//! after an [`Event::Gap`], persist them only once that history is resynced (a cursor
//! saved past a gap the app has not handled hides the loss from the next run).
//!
//! **Never a message twice, never out of order** within a history: the gateway sends
//! none twice on one stream; across streams (a reconnect, a token refresh's overlap)
//! [`Cursors`] drops any id that is not after the last one of its history and epoch.
//! Ids compare as numbers (`"5"` is `"5-0"`); a message whose id does not parse is
//! handed out (and not tracked), never dropped. Epochs are compared as strings: any
//! other epoch is another epoch. There is no order across histories (an inbox message
//! and a broadcast one).
//!
//! **Gaps are events.** `CONTINUITY_GAP` becomes [`Event::Gap`]: what follows is
//! complete, what came before it was lost (trimmed beyond the retention, expired, or the
//! history started over), and the app resyncs that history from its backend (or
//! `ListHistory`). A continuity this client does not know is reported as a gap. Each
//! gap is told once: a GAP state identical (epoch and point) to the last one told for
//! its history is not told again, any other is, across reconnects too. With
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
//! | UNAUTHENTICATED | the token expired (or a backend logged the device out) | reconnects at once with a fresh token; stops if the token refused was itself fetched after an UNAUTHENTICATED (without a token source: reconnects after a backoff) |
//! | ABORTED | replaced by a newer stream of the same device | stops: the newer stream is the device's |
//! | PERMISSION_DENIED | a Disconnect without reconnect (a ban), or a token of another user | stops |
//! | INVALID_ARGUMENT | a request that will not get better (a bad device id, a token that is not a header) | stops |
//! | FAILED_PRECONDITION | with [`Builder::strict_resume`]: a strict resume that cannot be honoured | stops, naming the history to resync (without strict resume: reconnects after a backoff) |
//! | anything else | e.g. a stream ended without a status, DEADLINE_EXCEEDED, INTERNAL, UNIMPLEMENTED, NOT_FOUND, DATA_LOSS | reconnects after a backoff |
//!
//! Nothing waits forever: the token source has 30 s to answer ([`Builder::token_timeout`])
//! and a stream 15 s to open, until the gateway's response headers
//! ([`Builder::open_timeout`]); past either, the attempt counts as UNAVAILABLE.
//!
//! Each end is an [`Event::Disconnected`] (with the wait before the next attempt) or
//! the final [`Event::Stopped`]; each new stream is an [`Event::Connected`].
//!
//! **Tokens.** The [`TokenSource`] is asked before the first attempt, ahead of each
//! token's expiry, and after a refusal. The JWT's claims are read without verifying
//! (the gateway verifies): its lifetime is `exp - iat` (or, without `iat`, `exp` less
//! the device's clock), counted on a monotonic clock from when the token came, so a
//! device clock that is off or changes does not matter; the refresh comes 10% of the
//! lifetime (at least 5 s) before its end. A token that comes already expired (or due
//! within a second) is not refreshed every second: the refreshes back off
//! (exponentially, jittered) until a token with a life ahead of it comes. A refresh
//! that gets the token in use back is skipped and tried again after that backoff.
//!
//! A refresh is make-before-break: a second stream opens with the fresh token and the
//! current cursors while the first goes on. Its first states are judged against where
//! the client is then: if every history it was given continues from at or before the
//! client's position in the same epoch, the client switches to it and drops the first
//! (the overlap is deduplicated); if it reports a gap, another epoch, or a position
//! ahead, it is dropped instead and the first goes on. So a refresh never causes a gap
//! event, a duplicate or a position moving back. A refresh that fails (any status, the
//! new stream dropped) leaves the stream alone and is tried again in 1-5 s, up to 8
//! times in a row; if the token expires meanwhile, the gateway ends the stream and
//! the client reconnects with a fresh token. If the first stream ends with a status
//! that stops the client while the second opens, the client stops. The gateway must
//! keep two streams per device for this (`--max-streams-per-device`, 4 by default): with
//! 1, the second replaces the first, which ends ABORTED, and the client stops. A token
//! that is not a JWT with an `exp` (an API key) is used until refused.
//!
//! **Gateways and backoff.** The client starts with the first gateway (put the
//! nearest first) and moves to the next at each reconnect, so a device of a replica
//! that went away lands on another at once. The wait before the n-th attempt in a row
//! is random in `[0, min(max, initial × 2ⁿ)]` ("full jitter": a replica's devices come
//! back spread out, not all at once), 500 ms and 30 s by default; it starts over after
//! a stream that stayed up at least `max`. A refused token is retried at once.
//!
//! **Acks** ([`Client::ack_all`], [`Client::ack`]) send `push.v1.Ack` with the current
//! token, for what the app was handed in [`Event::Message`]s ([`Client::delivered`]:
//! per history, the epoch and id of the last message returned), never a position that
//! only a state gave (from now, a gap, a join); only for histories whose position moved
//! since the last ack, so an ack never goes back and a repeated one costs nothing. The
//! gateway refuses the cursor of a group the user left while connected, one per
//! answer: the client leaves each out in turn (and never sends it again) and
//! acknowledges the rest. Ack after handling a batch ([`Events::buffered`] `== 0`),
//! not after every message, and do not let a failed ack (e.g. [`Error::NotConnected`]
//! before the first stream) end the app's loop.
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
