//! What the end of a stream (or an attempt refused) asks of the client: retry after a
//! backoff on the next gateway, reauthenticate at once, or stop (naming the history a
//! strict resume could not honour). Separate from the event loop: the decisions of the
//! crate docs' status table, in one place.

use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{Event, Events, Phase, refresh::Refresh};
use crate::history::History;

impl Events {
    /// The stream ended with `status`.
    pub(super) fn ended(&mut self, status: Status) -> Option<Event> {
        let verdict = self.verdict(&status);
        let Phase::Open(live) = &mut self.phase else { return None };
        if !matches!(live.refresh, Refresh::At(_)) && verdict != Verdict::Stop {
            // Its successor is being opened: that decides.
            tracing::debug!(?status, "the stream ended while its successor opened");
            live.ended = Some(status);
            return None;
        }
        let (gateway, up) = (live.gateway, live.since.elapsed());
        Some(self.failed(gateway, Some(up), status))
    }

    /// What to do after `status` ended (or refused) a stream on `gateway` that had been
    /// up for `up`.
    pub(super) fn failed(&mut self, gateway: usize, up: Option<Duration>, status: Status) -> Event {
        match self.verdict(&status) {
            Verdict::Stop => self.stop(status),
            Verdict::Reauthenticate => {
                // At once, with a fresh token and on the same gateway.
                if let Some(t) = self.token.as_mut() {
                    t.refused = true;
                }
                self.next_gateway = gateway;
                self.phase = Phase::Start;
                tracing::debug!(?status, "token refused; reconnecting with a fresh one");
                Event::Disconnected { status, retry_in: Duration::ZERO }
            }
            Verdict::Retry => {
                if up.is_some_and(|up| up >= self.backoff.max()) {
                    self.backoff.reset();
                }
                let retry_in = self.backoff.next();
                self.next_gateway = (gateway + 1) % self.shared.config.targets.len();
                self.phase = Phase::Waiting(Instant::now() + retry_in);
                tracing::debug!(?status, ?retry_in, "stream ended; reconnecting");
                Event::Disconnected { status, retry_in }
            }
        }
    }

    /// What `status`, ending (or refusing) a stream, asks of the client: see
    /// [`verdict`]; UNAUTHENTICATED stops only when the token was fetched after a
    /// refusal already, and is retried after a backoff when there is no token source
    /// to get another from.
    fn verdict(&self, status: &Status) -> Verdict {
        match verdict(status.code(), self.shared.config.strict) {
            Verdict::Reauthenticate if self.shared.config.source.is_none() => Verdict::Retry,
            Verdict::Reauthenticate if self.token.as_ref().is_some_and(|t| t.after_refusal) => Verdict::Stop,
            v => v,
        }
    }

    fn stop(&mut self, status: Status) -> Event {
        self.stop_quietly();
        let resync = (status.code() == Code::FailedPrecondition).then(|| resync_history(&status)).flatten();
        tracing::debug!(?status, ?resync, "stopped");
        Event::Stopped { status, resync }
    }

    pub(super) fn stop_quietly(&mut self) {
        self.phase = Phase::Stopped;
        self.states = Vec::new().into_iter();
        self.messages = Vec::new().into_iter();
        self.queued.clear();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Try again after a backoff, on the next gateway.
    Retry,
    /// Try again at once with a fresh token.
    Reauthenticate,
    /// Give up.
    Stop,
}

/// What a status that ends (or refuses) a stream asks of the device (docs/DELIVERY.md):
/// ABORTED is a stream replaced by a newer one of the same device, PERMISSION_DENIED a
/// ban (or a token of another user), INVALID_ARGUMENT a request that will not get
/// better, FAILED_PRECONDITION under strict resume a position that cannot be honoured
/// (the app resyncs). UNAUTHENTICATED asks for a fresh token. Everything else
/// (UNAVAILABLE on a drain or a Disconnect with reconnect, RESOURCE_EXHAUSTED for a
/// slow device or too many streams, a lost connection, UNIMPLEMENTED or NOT_FOUND from
/// a proxy in the way...) passes: retried after a backoff.
fn verdict(code: Code, strict: bool) -> Verdict {
    match code {
        Code::Aborted | Code::PermissionDenied | Code::InvalidArgument => Verdict::Stop,
        Code::FailedPrecondition if strict => Verdict::Stop,
        Code::Unauthenticated => Verdict::Reauthenticate,
        _ => Verdict::Retry,
    }
}

/// The history a FAILED_PRECONDITION names (a PreconditionFailure of type CURSOR).
fn resync_history(status: &Status) -> Option<History> {
    let details = status.get_error_details();
    let failure = details.precondition_failure()?;
    failure.violations.iter().find(|v| v.r#type == "CURSOR").and_then(|v| v.subject.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decide_between_retrying_reauthenticating_and_stopping() {
        for strict in [false, true] {
            for code in [Code::Aborted, Code::PermissionDenied, Code::InvalidArgument] {
                assert_eq!(verdict(code, strict), Verdict::Stop, "{code:?}");
            }
            assert_eq!(verdict(Code::Unauthenticated, strict), Verdict::Reauthenticate);
            for code in [
                Code::Unavailable,
                Code::ResourceExhausted,
                Code::DeadlineExceeded,
                Code::Internal,
                Code::Unknown,
                Code::Unimplemented,
                Code::NotFound,
                Code::DataLoss,
                Code::Cancelled,
                Code::AlreadyExists,
                Code::OutOfRange,
                Code::Ok,
            ] {
                assert_eq!(verdict(code, strict), Verdict::Retry, "{code:?}");
            }
        }
        // A strict resume that cannot be honoured stops (naming the history); without
        // strict resume the gateway has no reason to say it, and it is retried.
        assert_eq!(verdict(Code::FailedPrecondition, true), Verdict::Stop);
        assert_eq!(verdict(Code::FailedPrecondition, false), Verdict::Retry);
    }

    #[test]
    fn a_strict_resume_failure_names_its_history() {
        use tonic_types::{ErrorDetails, StatusExt};
        let details = ErrorDetails::with_precondition_failure_violation("CURSOR", "group:team", "gone");
        let status = Status::with_error_details(Code::FailedPrecondition, "resync", details);
        assert_eq!(resync_history(&status), Some(History::Group("team".into())));
        assert_eq!(resync_history(&Status::failed_precondition("no details")), None);
    }
}
