//! `push.v1.PushGateway`: the one public contract, composed from the internal services.
use push_common::ids::{DeviceId, Id, UserId};
use push_proto::{
    presence::v1::presence_client::PresenceClient,
    profile::v1::profile_client::ProfileClient,
    push::v1::{self as pb, push_gateway_server::PushGateway},
};
use tonic::{Request, Response, Status};

use crate::{
    downstream::{ForwardedStream, Internal, forward, forward_stream},
    membership::Membership,
    push::Pusher,
    reads::Reads,
    receipts::Receipts,
    stream::{DeviceStream, Streams},
    watch_caps,
};

/// The gateway service: presence calls go to presence-svc, profile calls to profile-svc,
/// pushes, groups and receipts to Redis, device streams to the stream side.
#[derive(Clone)]
pub struct Gateway {
    presence: PresenceClient<Internal>,
    profile: ProfileClient<Internal>,
    pusher: Pusher,
    membership: Membership,
    receipts: Receipts,
    reads: Reads,
    streams: Streams,
    watches: watch_caps::WatchCaps,
}

/// What the gateway's own (not forwarded) methods run on.
pub struct Parts {
    pub pusher: Pusher,
    pub membership: Membership,
    pub receipts: Receipts,
    pub reads: Reads,
    pub streams: Streams,
    /// Most open WatchPresence streams per API key.
    pub max_watches: usize,
}

impl Gateway {
    pub fn new(presence: Internal, profile: Internal, parts: Parts) -> Self {
        let (presence, profile) = (PresenceClient::new(presence), ProfileClient::new(profile));
        let Parts { pusher, membership, receipts, reads, streams, max_watches } = parts;
        Self {
            presence,
            profile,
            pusher,
            membership,
            receipts,
            reads,
            streams,
            watches: watch_caps::WatchCaps::new(max_watches),
        }
    }
}

/// The API key a backend call came with ('' for none).
fn caller<T>(req: &Request<T>) -> String {
    match req.extensions().get::<push_common::auth::Identity>() {
        Some(push_common::auth::Identity::Backend { key, .. }) => key.clone(),
        _ => String::new(),
    }
}

// Presence and profile methods forward to the internal method of the same name (see
// `forward`); push, group and stream methods are the gateway's own.
#[tonic::async_trait]
impl PushGateway for Gateway {
    async fn login(&self, req: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let mut c = self.presence.clone();
        forward(req, |r| async move { c.login(r).await }).await
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let mut c = self.presence.clone();
        forward(req, |r| async move { c.heartbeat(r).await }).await
    }

    /// Ends the session in presence-svc, then the device's open streams on every
    /// replica: otherwise a stream would keep receiving and its next renewal would bring
    /// the session back.
    async fn logout(&self, req: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let (user, device) = (UserId::parse(&req.get_ref().user_id), DeviceId::parse(&req.get_ref().session_id));
        let mut c = self.presence.clone();
        let done = forward(req, |r| async move { c.logout(r).await }).await?;
        // presence-svc refused invalid ids, so both parse when the logout was done.
        if let (Ok(user), Ok(device)) = (user, device) {
            self.streams.disconnect(&user, &device).await?;
        }
        Ok(done)
    }

    async fn get_presence(
        &self,
        req: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        let mut c = self.presence.clone();
        forward(req, |r| async move { c.get_presence(r).await }).await
    }

    async fn list_online_users(
        &self,
        req: Request<pb::ListOnlineUsersRequest>,
    ) -> Result<Response<pb::ListOnlineUsersResponse>, Status> {
        let mut c = self.presence.clone();
        forward(req, |r| async move { c.list_online_users(r).await }).await
    }

    async fn count_online_users(
        &self,
        req: Request<pb::CountOnlineUsersRequest>,
    ) -> Result<Response<pb::CountOnlineUsersResponse>, Status> {
        let mut c = self.presence.clone();
        forward(req, |r| async move { c.count_online_users(r).await }).await
    }

    async fn put_profile(
        &self,
        req: Request<pb::PutProfileRequest>,
    ) -> Result<Response<pb::PutProfileResponse>, Status> {
        let mut c = self.profile.clone();
        forward(req, |r| async move { c.put_profile(r).await }).await
    }

    async fn update_profile(
        &self,
        req: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::UpdateProfileResponse>, Status> {
        let mut c = self.profile.clone();
        forward(req, |r| async move { c.update_profile(r).await }).await
    }

    async fn get_profile(
        &self,
        req: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        let mut c = self.profile.clone();
        forward(req, |r| async move { c.get_profile(r).await }).await
    }

    async fn batch_get_profiles(
        &self,
        req: Request<pb::BatchGetProfilesRequest>,
    ) -> Result<Response<pb::BatchGetProfilesResponse>, Status> {
        let mut c = self.profile.clone();
        forward(req, |r| async move { c.batch_get_profiles(r).await }).await
    }

    async fn delete_profile(
        &self,
        req: Request<pb::DeleteProfileRequest>,
    ) -> Result<Response<pb::DeleteProfileResponse>, Status> {
        let mut c = self.profile.clone();
        forward(req, |r| async move { c.delete_profile(r).await }).await
    }

    type WatchPresenceStream = ForwardedStream<pb::WatchPresenceResponse>;

    async fn watch_presence(
        &self,
        req: Request<pb::WatchPresenceRequest>,
    ) -> Result<Response<Self::WatchPresenceStream>, Status> {
        let place = self.watches.take(caller(&req))?;
        let mut c = self.presence.clone();
        let events = forward_stream(req, |r| async move { c.watch_presence(r).await }).await?;
        Ok(Response::new(place.hold(events.into_inner())))
    }

    type SubscribeStream = DeviceStream;

    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Result<Response<DeviceStream>, Status> {
        Ok(Response::new(self.streams.open(req).await?))
    }

    async fn push_to_all(&self, req: Request<pb::PushToAllRequest>) -> Result<Response<pb::PushToAllResponse>, Status> {
        Ok(Response::new(self.pusher.to_all(&caller(&req), req.into_inner()).await?))
    }

    async fn push_to_users(
        &self,
        req: Request<pb::PushToUsersRequest>,
    ) -> Result<Response<pb::PushToUsersResponse>, Status> {
        Ok(Response::new(self.pusher.to_users(&caller(&req), req.into_inner()).await?))
    }

    async fn push_to_group(
        &self,
        req: Request<pb::PushToGroupRequest>,
    ) -> Result<Response<pb::PushToGroupResponse>, Status> {
        Ok(Response::new(self.pusher.to_group(&caller(&req), req.into_inner()).await?))
    }

    async fn push(&self, req: Request<pb::PushRequest>) -> Result<Response<pb::PushResponse>, Status> {
        Ok(Response::new(self.pusher.push(&caller(&req), req.into_inner()).await?))
    }

    async fn push_batch(&self, req: Request<pb::PushBatchRequest>) -> Result<Response<pb::PushBatchResponse>, Status> {
        Ok(Response::new(self.pusher.batch(&caller(&req), req.into_inner()).await?))
    }

    async fn list_history(
        &self,
        req: Request<pb::ListHistoryRequest>,
    ) -> Result<Response<pb::ListHistoryResponse>, Status> {
        let identity = req.extensions().get::<push_common::auth::Identity>().cloned();
        Ok(Response::new(self.reads.list(identity.as_ref(), req.into_inner()).await?))
    }

    async fn disconnect(
        &self,
        req: Request<pb::DisconnectRequest>,
    ) -> Result<Response<pb::DisconnectResponse>, Status> {
        self.streams.disconnect_with(req.into_inner()).await?;
        Ok(Response::new(pb::DisconnectResponse {}))
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        self.streams.ack(req).await?;
        Ok(Response::new(pb::AckResponse {}))
    }

    async fn get_delivery_status(
        &self,
        req: Request<pb::GetDeliveryStatusRequest>,
    ) -> Result<Response<pb::GetDeliveryStatusResponse>, Status> {
        Ok(Response::new(self.receipts.delivery_status(req.into_inner()).await?))
    }

    async fn join_group(&self, req: Request<pb::JoinGroupRequest>) -> Result<Response<pb::JoinGroupResponse>, Status> {
        Ok(Response::new(self.membership.join(req.into_inner()).await?))
    }

    async fn leave_group(
        &self,
        req: Request<pb::LeaveGroupRequest>,
    ) -> Result<Response<pb::LeaveGroupResponse>, Status> {
        Ok(Response::new(self.membership.leave(req.into_inner()).await?))
    }

    async fn list_group_members(
        &self,
        req: Request<pb::ListGroupMembersRequest>,
    ) -> Result<Response<pb::ListGroupMembersResponse>, Status> {
        Ok(Response::new(self.membership.members(req.into_inner()).await?))
    }

    async fn list_user_groups(
        &self,
        req: Request<pb::ListUserGroupsRequest>,
    ) -> Result<Response<pb::ListUserGroupsResponse>, Status> {
        Ok(Response::new(self.membership.user_groups(req.into_inner()).await?))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::{DescriptorProto, FileDescriptorSet};

    /// Every public message the gateway transcodes, with its internal package.
    const PAIRS: [(&str, &str); 24] = [
        ("WatchPresenceRequest", "presence"),
        ("WatchPresenceResponse", "presence"),
        ("LoginRequest", "presence"),
        ("LoginResponse", "presence"),
        ("HeartbeatRequest", "presence"),
        ("HeartbeatResponse", "presence"),
        ("LogoutRequest", "presence"),
        ("LogoutResponse", "presence"),
        ("GetPresenceRequest", "presence"),
        ("GetPresenceResponse", "presence"),
        ("ListOnlineUsersRequest", "presence"),
        ("ListOnlineUsersResponse", "presence"),
        ("CountOnlineUsersRequest", "presence"),
        ("CountOnlineUsersResponse", "presence"),
        ("PutProfileRequest", "profile"),
        ("PutProfileResponse", "profile"),
        ("UpdateProfileRequest", "profile"),
        ("UpdateProfileResponse", "profile"),
        ("GetProfileRequest", "profile"),
        ("GetProfileResponse", "profile"),
        ("BatchGetProfilesRequest", "profile"),
        ("BatchGetProfilesResponse", "profile"),
        ("DeleteProfileRequest", "profile"),
        ("DeleteProfileResponse", "profile"),
    ];

    fn message<'a>(fds: &'a FileDescriptorSet, package: &str, name: &str) -> &'a DescriptorProto {
        find(fds, package, name).unwrap_or_else(|| panic!("{package}.{name} is not in the descriptor set"))
    }

    /// A message by package and (possibly nested, dotted) name.
    fn find<'a>(fds: &'a FileDescriptorSet, package: &str, name: &str) -> Option<&'a DescriptorProto> {
        let mut parts = name.split('.');
        let top = parts.next()?;
        let mut m = fds
            .file
            .iter()
            .filter(|f| f.package() == package)
            .flat_map(|f| &f.message_type)
            .find(|m| m.name() == top)?;
        for part in parts {
            m = m.nested_type.iter().find(|n| n.name() == part)?;
        }
        Some(m)
    }

    /// An enum by package and (possibly nested, dotted) name.
    fn find_enum<'a>(fds: &'a FileDescriptorSet, package: &str, name: &str) -> &'a prost_types::EnumDescriptorProto {
        let (outer, leaf) = name.rsplit_once('.').map_or((None, name), |(o, l)| (Some(o), l));
        let candidates: Vec<_> = match outer {
            Some(o) => find(fds, package, o).map(|m| m.enum_type.iter().collect()).unwrap_or_default(),
            None => fds.file.iter().filter(|f| f.package() == package).flat_map(|f| &f.enum_type).collect(),
        };
        candidates.into_iter().find(|e| e.name() == leaf).unwrap_or_else(|| panic!("enum {package}.{name} not found"))
    }

    /// Internal fields that only the gateway sets for itself, with no public twin: a
    /// public request transcoded leaves them unset (prost drops unknown fields when it
    /// decodes the public message, so a client cannot smuggle them in either).
    const INTERNAL_ONLY: [(&str, &str); 3] =
        [("LoginRequest", "holder"), ("HeartbeatRequest", "holder"), ("LogoutRequest", "holder")];

    /// The shape of a message, with the messages and enums it uses expanded in place
    /// (so `push.v1.Session` and `presence.v1.Session` compare by their fields, and
    /// well-known types by name).
    fn shape(fds: &FileDescriptorSet, package: &str, name: &str, depth: usize) -> String {
        assert!(depth < 8, "{package}.{name} nests too deeply");
        let m = message(fds, package, name);
        let mut fields: Vec<_> = m.field.iter().filter(|f| !INTERNAL_ONLY.contains(&(name, f.name()))).collect();
        fields.sort_by_key(|f| f.number());
        let mut out = String::new();
        for f in fields {
            let ty = f.type_name().trim_start_matches('.');
            let inner = match ty.strip_prefix(&format!("{package}.")) {
                // A type of the same package: compared by its own shape.
                Some(local) if f.r#type() == prost_types::field_descriptor_proto::Type::Message => {
                    format!("{{{}}}", shape(fds, package, local, depth + 1))
                }
                Some(local) => {
                    let e = find_enum(fds, package, local);
                    let values: Vec<_> = e.value.iter().map(|v| format!("{}={}", v.name(), v.number())).collect();
                    format!("enum[{}]", values.join(","))
                }
                // Another package (google.protobuf): compared by name.
                None => ty.to_owned(),
            };
            out += &format!("{} {} {:?} {:?} {inner}; ", f.number(), f.name(), f.r#type(), f.label());
        }
        out
    }

    /// Transcoding is only sound while each public message has exactly the fields
    /// (number, name, type, cardinality, and the shape of the messages and enums they
    /// hold) of its internal twin, apart from the internal-only ones.
    #[test]
    fn contract_pairs_match() {
        let fds = FileDescriptorSet::decode(push_proto::FILE_DESCRIPTOR_SET).unwrap();
        for (name, pkg) in PAIRS {
            let public = shape(&fds, "push.v1", name, 0);
            let internal = shape(&fds, &format!("{pkg}.v1"), name, 0);
            assert_eq!(public, internal, "push.v1.{name} differs from {pkg}.v1.{name}");
        }
    }

    /// The public contract imports nothing internal: a client needs push.proto and the
    /// Google well-known types only.
    #[test]
    fn public_contract_stands_alone() {
        let fds = FileDescriptorSet::decode(push_proto::FILE_DESCRIPTOR_SET).unwrap();
        let file = fds.file.iter().find(|f| f.package() == "push.v1").unwrap();
        for dep in &file.dependency {
            assert!(dep.starts_with("google/protobuf/"), "push.v1 imports {dep}");
        }
    }

    /// And every RPC of the public service is covered by the list above.
    #[test]
    fn every_rpc_is_paired() {
        let fds = FileDescriptorSet::decode(push_proto::FILE_DESCRIPTOR_SET).unwrap();
        let svc = fds.file.iter().flat_map(|f| &f.service).find(|s| s.name() == "PushGateway").unwrap();
        // RPCs the gateway serves itself have no internal twin.
        const OWN: [&str; 14] = [
            "Push",
            "PushBatch",
            "ListHistory",
            "Disconnect",
            "Subscribe",
            "Ack",
            "GetDeliveryStatus",
            "PushToAll",
            "PushToUsers",
            "PushToGroup",
            "JoinGroup",
            "LeaveGroup",
            "ListGroupMembers",
            "ListUserGroups",
        ];
        for m in svc.method.iter().filter(|m| !OWN.contains(&m.name())) {
            for t in [m.input_type(), m.output_type()] {
                let name = t.trim_start_matches(".push.v1.");
                assert!(PAIRS.iter().any(|(n, _)| *n == name), "{t} is not paired");
            }
        }
    }
}
