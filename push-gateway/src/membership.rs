//! Group RPCs: join, leave, members, a user's groups. Join and leave change the group
//! and its users' keys in one Lua step each, then announce the change on the users'
//! channels so their open streams, on any replica, re-read their groups.
use prost::bytes::Bytes;
use push_common::{
    Error,
    ids::{GroupId, UserId},
    token,
    validate::Violations,
};
use push_proto::push::v1 as pb;

use crate::{
    envelope,
    push::PushLimits,
    store::{Joined, Store},
};

const DEFAULT_PAGE: usize = 100;

/// The group side of the gateway.
#[derive(Clone)]
pub struct Membership {
    pub store: Store,
    pub limits: PushLimits,
}

impl Membership {
    fn check_membership(&self, group: &str, users: &[String]) -> Result<(GroupId, Vec<UserId>), Error> {
        let mut v = Violations::new();
        let group = v.parse::<GroupId>("group_id", group);
        let mut users = v.parse_all::<UserId>("user_ids", users, self.limits.max_users_per_call);
        let group = v.check_with(group)?;
        users.sort();
        users.dedup();
        Ok((group, users))
    }

    /// Tells the users' open streams (on any replica) to re-read their groups.
    async fn announce(&self, users: &[UserId]) -> Result<(), Error> {
        let channels: Vec<String> = users.iter().map(|u| self.store.keys().channel_user(u)).collect();
        self.store.publish(&channels, &Bytes::from_static(&[envelope::MEMBERSHIP])).await
    }

    pub async fn join(&self, r: pb::JoinGroupRequest) -> Result<pb::JoinGroupResponse, Error> {
        let (group, users) = self.check_membership(&r.group_id, &r.user_ids)?;
        match self.store.join(&group, &users, self.limits.max_groups_per_user).await? {
            Joined::Added(n) => {
                self.announce(&users).await?;
                Ok(pb::JoinGroupResponse { added: n as i32 })
            }
            Joined::TooManyGroups(i) => Err(Error::ResourceExhausted(format!(
                "user {:?} already belongs to {} groups, the limit (max_groups_per_user)",
                users[i], self.limits.max_groups_per_user
            ))),
        }
    }

    pub async fn leave(&self, r: pb::LeaveGroupRequest) -> Result<pb::LeaveGroupResponse, Error> {
        let (group, users) = self.check_membership(&r.group_id, &r.user_ids)?;
        let removed = self.store.leave(&group, &users, self.limits.max_groups_per_user).await?;
        self.announce(&users).await?;
        Ok(pb::LeaveGroupResponse { removed: removed as i32 })
    }

    pub async fn members(&self, r: pb::ListGroupMembersRequest) -> Result<pb::ListGroupMembersResponse, Error> {
        let mut v = Violations::new();
        let group = v.parse::<GroupId>("group_id", &r.group_id);
        if r.page_size < 0 {
            v.add("page_size", "must not be negative");
        }
        let after = decode_token(&r.page_token);
        if after.is_none() {
            v.add("page_token", "is not a token returned by this service");
        }
        let group = v.check_with(group)?;
        let want = match r.page_size {
            0 => DEFAULT_PAGE,
            n => (n as usize).min(self.limits.max_page_size),
        };
        let user_ids = self.store.members(&group, &after.unwrap_or_default(), want).await?;
        let next_page_token = match user_ids.last() {
            Some(last) if user_ids.len() == want => encode_token(last),
            _ => String::new(),
        };
        Ok(pb::ListGroupMembersResponse { user_ids, next_page_token })
    }

    pub async fn user_groups(&self, r: pb::ListUserGroupsRequest) -> Result<pb::ListUserGroupsResponse, Error> {
        let mut v = Violations::new();
        let user = v.parse::<UserId>("user_id", &r.user_id);
        let user = v.check_with(user)?;
        Ok(pb::ListUserGroupsResponse { group_ids: self.store.user_groups(&user).await? })
    }
}

/// Member page tokens: the last id returned (opaque to clients).
fn encode_token(last: &str) -> String {
    token::encode(last)
}

/// The id after which to continue; `Some("")` for the first page, `None` when invalid.
fn decode_token(t: &str) -> Option<String> {
    let s = token::decode(t, push_common::validate::MAX_ID_LEN)?;
    (s.is_empty() || push_common::validate::id_problem(&s).is_none()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_tokens_round_trip_and_reject_junk() {
        assert_eq!(decode_token(&encode_token("user-9")), Some("user-9".into()));
        assert_eq!(decode_token(""), Some(String::new()));
        for junk in ["x", "zz", "7b7d", &"61".repeat(200)] {
            assert_eq!(decode_token(junk), None, "{junk}");
        }
    }
}
