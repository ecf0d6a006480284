//! The response stream of one Subscribe.
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use push_proto::wire::SubscribeResponse;
use tonic::Status;

use super::{Event, Events, record::Stream};

/// What tonic polls for a device. Dropping it (the device went away, the stream ended,
/// or Subscribe failed or was cancelled after the stream was registered) hands the
/// stream to the maintenance task, which detaches it and ends its presence session.
pub struct DeviceStream {
    stream: Arc<Stream>,
    finished: bool,
    events: Events,
}

impl DeviceStream {
    pub(super) fn new(stream: Arc<Stream>, events: Events) -> Self {
        Self { stream, finished: false, events }
    }
}

impl Drop for DeviceStream {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Closed(self.stream.clone()));
    }
}

impl tokio_stream::Stream for DeviceStream {
    type Item = Result<SubscribeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let item = self.stream.queue.poll_batch(cx);
        if let Poll::Ready(Some(Err(_))) = item {
            self.finished = true;
        }
        item
    }
}
