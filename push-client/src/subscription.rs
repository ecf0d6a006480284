//! [`Subscription`]: one `Subscribe` stream, opened once, read as it comes.
use push_proto::{
    push::v1::{SubscribeRequest, push_gateway_client::PushGatewayClient},
    wire::SubscribeResponse,
};
use tonic::{
    Request, Status, Streaming,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

/// Largest stream item read. The gateway batches up to 64 KiB of messages per item, or
/// one message of up to its payload limit (64 KiB by default): far below this.
pub(crate) const MAX_ITEM_BYTES: usize = 16 << 20;

/// One open `Subscribe` stream: the layer under [`crate::Client`], without reconnects,
/// cursor tracking or token refresh. Use it with [`crate::Cursors`] when you run the
/// loop yourself (or to see the stream exactly as the gateway sends it, duplicates and
/// all, as the end-to-end tests do).
///
/// ```no_run
/// use push_client::{Change, Cursors, Subscription};
/// use push_proto::push::v1::SubscribeRequest;
///
/// # async fn run(token: &str) -> Result<(), Box<dyn std::error::Error>> {
/// let channel = tonic::transport::Channel::from_static("http://127.0.0.1:50051").connect().await?;
/// let mut cursors = Cursors::new();
/// let request = SubscribeRequest { device_id: "phone".into(), cursors: cursors.cursors(), ..Default::default() };
/// let mut stream = Subscription::open(channel, Some(token), request).await?;
/// while let Some(mut item) = stream.next().await? {
///     for change in cursors.apply(&mut item).changes {
///         if let Change::Gap(history) = change {
///             println!("resync {history}");
///         }
///     }
///     for m in &item.messages {
///         println!("{} {}", m.id, m.topic);
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Subscription {
    stream: Streaming<SubscribeResponse>,
}

impl Subscription {
    /// Opens `Subscribe` on `channel`, sending `token` (a device token, or an API key
    /// that may subscribe for any user) as `authorization: Bearer`. Returns once the
    /// gateway accepted the stream (its response headers came), or the status it was
    /// refused with.
    pub async fn open(channel: Channel, token: Option<&str>, request: SubscribeRequest) -> Result<Self, Status> {
        let mut req = Request::new(request);
        if let Some(t) = token {
            req.metadata_mut().insert("authorization", bearer(t)?);
        }
        let mut client = PushGatewayClient::new(channel).max_decoding_message_size(MAX_ITEM_BYTES);
        let stream = client.subscribe(req).await?.into_inner();
        Ok(Subscription { stream })
    }

    /// The next item (its states come first: apply them first); `Ok(None)` when the
    /// gateway ended the stream without an error status (it never does on purpose), or
    /// the status it ended with.
    ///
    /// Cancel-safe: dropping the future (in a `select!`) loses nothing.
    pub async fn next(&mut self) -> Result<Option<SubscribeResponse>, Status> {
        self.stream.message().await
    }
}

/// `Bearer <token>` as a header value.
pub(crate) fn bearer(token: &str) -> Result<MetadataValue<Ascii>, Status> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| Status::invalid_argument("the token is not a valid header value (printable ASCII only)"))
}
