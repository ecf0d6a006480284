//! Generated code for the system's protobuf contracts.
//!
//! Layout:
//! - [`push::v1`]: the public `PushGateway` service, the one contract backends and devices use.
//! - [`presence::v1`]: the internal presence service (sessions as leases).
//! - [`profile::v1`]: the internal profile service.
//! - [`wire`]: the hand-written `push.v1.SubscribeResponse` (encode once, share bytes).
//! - [`codec`]: the codec of every service (prost with a small buffer per stream).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC reflection.

#![allow(clippy::all, clippy::pedantic)]

pub mod codec;
pub mod wire;

pub mod presence {
    pub mod v1 {
        tonic::include_proto!("presence.v1");
    }
}
pub mod profile {
    pub mod v1 {
        tonic::include_proto!("profile.v1");
    }
}
pub mod push {
    pub mod v1 {
        tonic::include_proto!("push.v1");
    }
}

/// Every file of the three packages and their imports, encoded; served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("push_descriptor");
