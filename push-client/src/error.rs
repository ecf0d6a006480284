//! The one error type of the crate's calls (stream ends are [`crate::Event`]s instead).
use tonic::Status;

use crate::{cursors::BadCursor, token::BoxError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// [`crate::Client::builder`] was given no gateway.
    #[error("no gateway to connect to")]
    NoGateway,
    /// The device id is required: it names the device's presence session and its acks.
    #[error("a device id is required")]
    NoDevice,
    /// A gateway URL that does not parse.
    #[error("gateway {url:?}: {source}")]
    BadUrl {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// A cursor that names no history or position.
    #[error(transparent)]
    BadCursor(#[from] BadCursor),
    /// An ack before the client ever connected: there is no gateway to send it to yet.
    #[error("not connected to a gateway yet")]
    NotConnected,
    /// The token source failed.
    #[error("the token source failed: {0}")]
    Token(BoxError),
    /// The gateway answered with an error (or could not be reached).
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Box<Status>),
}

impl Error {
    /// The gRPC status, when the gateway answered one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Status(s) => Some(s),
            _ => None,
        }
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        Error::Status(Box::new(s))
    }
}
