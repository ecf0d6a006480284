//! History reads (ListHistory): a page of a user's inbox, a group's history or the
//! broadcast history, newest or oldest first.
//!
//! A backend (history scope) reads any history as stored. A device token reads its own
//! inbox, the groups its user belongs to and the broadcast history, and never sees a
//! message pushed with its user excluded, as on its stream. Page tokens carry the
//! history's epoch: a history that started over since the first page is ABORTED, not
//! silently paged from the new one.
use prost::Message as _;
use push_common::{
    Error,
    auth::Identity,
    ids::{GroupId, Id, UserId},
    token,
    validate::Violations,
};
use push_proto::push::v1::{self as pb, Audience};
use tonic::Status;

use crate::{
    auth::device_user,
    envelope,
    history::{self, StreamId},
    push::PushLimits,
    store::Store,
};

const DEFAULT_PAGE: usize = 100;

/// The read side of the histories.
#[derive(Clone)]
pub struct Reads {
    pub store: Store,
    pub limits: PushLimits,
}

/// Where a page continues: after `id`, in `epoch`.
#[derive(Debug, PartialEq)]
struct PageToken {
    epoch: u64,
    id: StreamId,
}

impl PageToken {
    fn encode(&self) -> String {
        token::encode(&format!("{}/{}", self.epoch, self.id))
    }

    /// `Some(None)` for the first page, `None` when it is not a token of ours.
    fn decode(t: &str) -> Option<Option<PageToken>> {
        if t.is_empty() {
            return Some(None);
        }
        let plain = token::decode(t, 64)?;
        let (epoch, id) = plain.split_once('/')?;
        Some(Some(PageToken { epoch: history::parse_epoch(epoch)?, id: id.parse().ok()? }))
    }
}

impl Reads {
    pub async fn list(
        &self,
        identity: Option<&Identity>,
        r: pb::ListHistoryRequest,
    ) -> Result<pb::ListHistoryResponse, Status> {
        let device = match identity {
            Some(Identity::Device { user, .. }) => UserId::parse(user).ok(),
            _ => None,
        };
        let mut v = Violations::new();
        let audience = Audience::try_from(r.audience).unwrap_or(Audience::Unspecified);
        // Each field is checked whatever the others hold, so every bad one is named.
        let user = match audience {
            Audience::User => v.parse::<UserId>("user_id", &device_user(identity, &r.user_id)?),
            _ if r.user_id.is_empty() => None,
            _ => {
                v.parse::<UserId>("user_id", &r.user_id);
                v.add("user_id", "is only for AUDIENCE_USER");
                None
            }
        };
        let group = match audience {
            Audience::Group => v.parse::<GroupId>("group_id", &r.group_id),
            _ if r.group_id.is_empty() => None,
            _ => {
                v.parse::<GroupId>("group_id", &r.group_id);
                v.add("group_id", "is only for AUDIENCE_GROUP");
                None
            }
        };
        if audience == Audience::Unspecified {
            v.add("audience", "must be AUDIENCE_USER, AUDIENCE_GROUP or AUDIENCE_ALL");
        }
        if r.page_size < 0 {
            v.add("page_size", "must not be negative");
        }
        let after = PageToken::decode(&r.page_token);
        if after.is_none() {
            v.add("page_token", "is not a token returned by this service");
        }
        v.check()?;
        let keys = self.store.keys();
        let stream = match (&user, &group) {
            (Some(u), _) => keys.inbox(u),
            (_, Some(g)) => keys.group_history(g),
            _ => keys.all_history(),
        };
        if let (Some(reader), Some(g)) = (&device, &group)
            && !self.store.user_groups(reader).await?.iter().any(|x| x == g.as_str())
        {
            return Err(Status::permission_denied(format!("user {:?} is not a member of group {g:?}", &**reader)));
        }
        let want = match r.page_size {
            0 => DEFAULT_PAGE,
            n => (n as usize).min(self.limits.max_page_size),
        };
        let after = after.flatten();
        let page = self.store.history_page(&stream, after.as_ref().map(|t| t.id), want, !r.oldest_first).await?;
        let Some(epoch) = page.epoch else {
            return Ok(pb::ListHistoryResponse::default());
        };
        if after.as_ref().is_some_and(|t| t.epoch != epoch) {
            return Err(Error::Aborted(
                "the history started over (a new epoch) since the first page; list it again from the start".into(),
            )
            .into());
        }
        let next_page_token = match page.entries.last() {
            Some((id, _, _)) if page.entries.len() == want => PageToken { epoch, id: *id }.encode(),
            _ => String::new(),
        };
        let mut messages = Vec::with_capacity(page.entries.len());
        for (_, bytes, excluded) in page.entries {
            if let Some(reader) = &device
                && envelope::excludes(&excluded, reader)
            {
                continue;
            }
            let m = pb::Message::decode(bytes.as_slice())
                .map_err(|e| Error::Protocol(format!("a stored message does not decode: {e}")))?;
            messages.push(m);
        }
        Ok(pb::ListHistoryResponse { messages, next_page_token, epoch: epoch.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_junk() {
        let t = PageToken { epoch: 1764262800123456, id: StreamId { ms: 1764262800123, seq: 4 } };
        assert_eq!(PageToken::decode(&t.encode()), Some(Some(t)));
        assert_eq!(PageToken::decode(""), Some(None));
        for junk in ["x", "zz", &token::encode("1/x"), &token::encode("x/1-1"), &"61".repeat(200)] {
            assert_eq!(PageToken::decode(junk), None, "{junk}");
        }
    }
}
