//! Acks ([`Client::ack_all`], [`Client::ack`]): what was delivered, sent forward only,
//! with the cursors of groups the gateway refuses left out one answer at a time.
//! Separate from the event loop: acks run on the app's calls, not in
//! [`Events::recv`](crate::Events::recv).

use std::{sync::Arc, time::Duration};

use push_proto::push::v1::{AckRequest, Cursor, push_gateway_client::PushGatewayClient};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

#[cfg(doc)]
use super::Event; // linked to from the docs only
use super::{Client, Conn, lock};
use crate::{Error, cursors::Cursors, subscription::bearer};

/// Most cursors in one Ack (the gateway takes the inbox, the broadcast history and
/// every group: 1,002 by default).
const MAX_ACK_CURSORS: usize = 1000;
/// How long an Ack may take.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// Acknowledges every message handed out so far ([`Client::delivered`]).
    pub async fn ack_all(&self) -> Result<(), Error> {
        let cursors = self.delivered();
        self.ack(cursors).await
    }

    /// Acknowledges `cursors` (positions of messages the app handled, e.g. a snapshot of
    /// [`Client::delivered`]): with the device's token, on the current (or last)
    /// stream's gateway. Only what is after the last acknowledged position of each
    /// history is sent, so acks never go back; with nothing new, nothing is sent. A
    /// cursor the gateway refuses because the user is not in that group (any more: left
    /// in the moment before the stream's [`Event::Left`] came) is left out and not sent
    /// again; the others are acknowledged. The gateway names one refused cursor per
    /// answer: each is left out in turn (one more call per cursor at most) until the
    /// rest goes through.
    pub async fn ack(&self, cursors: impl IntoIterator<Item = Cursor>) -> Result<(), Error> {
        let wanted = Cursors::from_saved(cursors)?;
        let mut acked = self.shared.acked.lock().await;
        let forward = wanted.after(&acked);
        if forward.is_empty() {
            return Ok(());
        }
        if lock(&self.shared.conn).is_none() {
            return Err(Error::NotConnected);
        }
        for chunk in forward.chunks(MAX_ACK_CURSORS) {
            let (mut cursors, mut settled, mut refreshed) = (chunk.to_vec(), Vec::new(), false);
            let result = loop {
                if cursors.is_empty() {
                    break Ok(());
                }
                match self.send_ack(cursors.clone(), &mut refreshed).await {
                    Ok(()) => {
                        settled.append(&mut cursors);
                        break Ok(());
                    }
                    Err(e) if leave_out_refused(&mut cursors, &mut settled, &e) => {}
                    Err(e) => break Err(e),
                }
            };
            // Refused cursors are settled even when a later call failed: not sent again.
            acked.advance(&settled);
            result?;
        }
        Ok(())
    }

    /// Sends one Ack on the current connection; once per [`Client::ack`] call, a
    /// refused token is replaced by a fresh one and the call tried again.
    async fn send_ack(&self, cursors: Vec<Cursor>, refreshed: &mut bool) -> Result<(), Error> {
        let conn = lock(&self.shared.conn).clone().ok_or(Error::NotConnected)?;
        let status = match self.ack_once(&conn, cursors.clone()).await {
            Ok(()) => return Ok(()),
            Err(s) => s,
        };
        let config = &self.shared.config;
        match (status.code(), config.source.as_ref()) {
            (Code::Unauthenticated, Some(source)) if !*refreshed => {
                *refreshed = true;
                let token: Arc<str> = config.fetch_token(&**source).await.map_err(Error::Token)?.into();
                if let Some(c) = lock(&self.shared.conn).as_mut() {
                    c.token = Some(token.clone());
                }
                let conn = Conn { token: Some(token), ..conn };
                Ok(self.ack_once(&conn, cursors).await?)
            }
            _ => Err(status.into()),
        }
    }

    async fn ack_once(&self, conn: &Conn, cursors: Vec<Cursor>) -> Result<(), Status> {
        let config = &self.shared.config;
        let mut req =
            Request::new(AckRequest { user_id: config.user.clone(), device_id: config.device.clone(), cursors });
        if let Some(t) = &conn.token {
            req.metadata_mut().insert("authorization", bearer(t)?);
        }
        req.set_timeout(ACK_TIMEOUT);
        let mut client = PushGatewayClient::new(conn.channel.clone());
        match tokio::time::timeout(ACK_TIMEOUT, client.ack(req)).await {
            Ok(answer) => answer.map(drop),
            Err(_) => Err(Status::deadline_exceeded("the ack was not answered in time")),
        }
    }
}

/// After an Ack of `cursors` failed with `error`: when the gateway refused cursors as
/// not the user's (INVALID_ARGUMENT naming `cursors[i]`; it names one per answer),
/// moves them from `cursors` to `settled` (not to be sent again) and returns true: the
/// rest is sent again. Each call after the first has left out at least one cursor, so
/// there is one more call per cursor at most.
fn leave_out_refused(cursors: &mut Vec<Cursor>, settled: &mut Vec<Cursor>, error: &Error) -> bool {
    let refused = match error.status() {
        Some(s) if s.code() == Code::InvalidArgument => refused_cursors(s),
        _ => return false,
    };
    let refused: Vec<usize> = refused.into_iter().filter(|i| *i < cursors.len()).collect();
    if refused.is_empty() {
        return false;
    }
    // A group the user is not in (any more: left before the stream's LEFT state came).
    // The other histories are acknowledged.
    tracing::debug!(?refused, "the gateway refused acks for histories the user no longer reads");
    for i in refused.into_iter().rev() {
        settled.push(cursors.remove(i));
    }
    true
}

/// The indexes of the cursors an INVALID_ARGUMENT names (`cursors[i]...`).
fn refused_cursors(status: &Status) -> Vec<usize> {
    let details = status.get_error_details();
    let Some(bad) = details.bad_request() else { return Vec::new() };
    let mut out: Vec<usize> = bad
        .field_violations
        .iter()
        .filter_map(|v| v.field.strip_prefix("cursors[")?.split_once(']')?.0.parse().ok())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use push_proto::push::v1::{Audience, Continuity, Message};

    use super::*;
    use crate::{
        client::testing::{E1, E2, feed, msg, offline, state},
        history::History,
    };

    #[test]
    fn refused_ack_cursors_are_read_from_the_bad_request() {
        use tonic_types::{ErrorDetails, StatusExt};
        let mut details = ErrorDetails::with_bad_request_violation("cursors[2].group_id", "not a member");
        details.add_bad_request_violation("cursors[0].group_id", "not a member");
        details.add_bad_request_violation("user_id", "bad");
        let status = Status::with_error_details(Code::InvalidArgument, "bad", details);
        assert_eq!(refused_cursors(&status), [0, 2]);
    }

    /// Acks carry only what the app was handed in Message events: positions that only
    /// a state gave (from now, a gap's point, a join) are resumed from, not acked.
    #[test]
    fn only_positions_of_messages_handed_out_are_acknowledged() {
        let (client, mut events) = offline();
        let team = History::Group("team".into());
        feed(
            &mut events,
            vec![
                state(&History::Inbox, E1, "5-0", Continuity::FromNow),
                state(&History::All, E1, "7-0", Continuity::Resumed),
                state(&team, E1, "3-0", Continuity::FromNow),
            ],
            vec![],
        );
        assert_eq!(client.cursors().len(), 3);
        assert_eq!(client.delivered(), [], "nothing was handed out");
        feed(&mut events, vec![], vec![msg("6-0"), msg("6-0")]);
        assert_eq!(client.delivered(), [History::Inbox.cursor(E1, "6-0")]);
        // A gap moves the position (to resume from), not what was handed out.
        feed(&mut events, vec![state(&History::Inbox, E2, "40-0", Continuity::Gap)], vec![]);
        assert_eq!(client.cursors()[0], History::Inbox.cursor(E2, "40-0"));
        assert_eq!(client.delivered(), [History::Inbox.cursor(E1, "6-0")]);
        feed(&mut events, vec![], vec![msg("41-0")]);
        assert_eq!(client.delivered(), [History::Inbox.cursor(E2, "41-0")]);
        // A message whose id does not parse is handed out, and has no position.
        assert_eq!(feed(&mut events, vec![], vec![msg("not-an-id")]), ["message not-an-id"]);
        assert_eq!(client.delivered(), [History::Inbox.cursor(E2, "41-0")]);
        // A group left is not acknowledged any more.
        let group_msg = Message { audience: Audience::Group as i32, group_id: "team".into(), ..msg("4-0") };
        feed(&mut events, vec![], vec![group_msg]);
        assert_eq!(client.delivered().len(), 2);
        assert_eq!(feed(&mut events, vec![state(&team, E1, "4-0", Continuity::Left)], vec![]), ["left group:team"]);
        assert_eq!(client.delivered(), [History::Inbox.cursor(E2, "41-0")]);
    }

    /// The gateway refuses one cursor per answer: each is left out in turn (settled, not
    /// to be sent again) until the rest goes through, or another error ends the ack;
    /// the cursors refused before it stay settled.
    #[test]
    fn refused_ack_cursors_are_left_out_one_answer_at_a_time() {
        use tonic_types::{ErrorDetails, StatusExt};
        let refusal = |i: usize| -> Error {
            let details = ErrorDetails::with_bad_request_violation(format!("cursors[{i}].group_id"), "not a member");
            Status::with_error_details(Code::InvalidArgument, "bad", details).into()
        };
        let group = |g: &str| History::Group(g.into()).cursor(E1, "1-0");
        let all = vec![History::Inbox.cursor(E1, "1-0"), group("a"), group("b"), group("c")];
        // The gateway's answers to the successive calls: "a" refused, then "c" (index
        // 2 of what is left), then another error.
        let mut answers = vec![refusal(1), refusal(2), Error::from(Status::unavailable("going away"))].into_iter();
        let (mut cursors, mut settled) = (all.clone(), Vec::new());
        let mut calls = 0;
        let last = loop {
            calls += 1;
            let e = answers.next().unwrap();
            if !leave_out_refused(&mut cursors, &mut settled, &e) {
                break e;
            }
        };
        assert_eq!(calls, 3);
        assert_eq!(last.status().unwrap().code(), Code::Unavailable);
        assert_eq!(settled, [group("a"), group("c")]);
        assert_eq!(cursors, [all[0].clone(), group("b")]);
        // A refusal that names nothing sent, or another kind of error, ends it.
        assert!(!leave_out_refused(&mut cursors, &mut settled, &refusal(5)));
        assert!(!leave_out_refused(&mut cursors, &mut settled, &Status::invalid_argument("no details").into()));
    }
}
