//! Delivery receipts: whether a message reached each user's devices.
use push_common::{Error, ids::UserId, validate::Violations};
use push_proto::push::v1::{self as pb, DeliveryState};

use crate::{
    history::{self, Source, StreamId},
    push::PushLimits,
    store::Store,
};

/// Answers GetDeliveryStatus.
#[derive(Clone)]
pub struct Receipts {
    pub store: Store,
    pub limits: PushLimits,
}

impl Receipts {
    /// Whether a message reached each user: a device acknowledged it (or later), it is
    /// pending in the history, or it is not there (never pushed there, or trimmed).
    pub async fn delivery_status(
        &self,
        r: pb::GetDeliveryStatusRequest,
    ) -> Result<pb::GetDeliveryStatusResponse, Error> {
        let mut v = Violations::new();
        let id = r.message_id.parse::<StreamId>().ok();
        if id.is_none() {
            v.add("message_id", "must be a message id as returned by a push (\"<ms>-<seq>\")");
        }
        let users = v.parse_all::<UserId>("user_ids", &r.user_ids, self.limits.max_users_per_call);
        let source = history::parse_source(&mut v, ("audience", r.audience), ("group_id", &r.group_id));
        v.check()?;
        let (Some(id), Some(source)) = (id, source) else { unreachable!("checked above") };
        let keys = self.store.keys();
        let streams: Vec<String> = match &source {
            Source::Inbox => users.iter().map(|u| keys.inbox(u)).collect(),
            Source::All => vec![keys.all_history()],
            Source::Group(g) => vec![keys.group_history(g)],
        };
        let receipts = self.store.receipts(&streams, id, &users).await?;
        let suffix = source.ack_field("");
        let deliveries = r
            .user_ids
            .into_iter()
            .enumerate()
            .map(|(k, user_id)| {
                let (exists, epoch) = receipts.found[if streams.len() > 1 { k } else { 0 }];
                let mut device_ids: Vec<String> = receipts.acks[k]
                    .iter()
                    .filter_map(|(field, value)| {
                        let device = field.strip_suffix(suffix.as_str())?;
                        let pos = history::parse_position(value)?;
                        (exists && Some(pos.epoch) == epoch && pos.id >= id).then(|| device.to_owned())
                    })
                    .collect();
                device_ids.sort();
                let state = match (exists, device_ids.is_empty()) {
                    (false, _) => DeliveryState::Unknown,
                    (true, true) => DeliveryState::Pending,
                    (true, false) => DeliveryState::Delivered,
                };
                pb::UserDelivery { user_id, state: state as i32, device_ids }
            })
            .collect();
        Ok(pb::GetDeliveryStatusResponse { deliveries })
    }
}
