//! A device: one open `Subscribe` stream, read in the background.
//!
//! Built on push-client's single-attempt layer ([`Subscription`]) and its position
//! tracker ([`Cursors`]): the stream is recorded exactly as the gateway sends it
//! (duplicates included, so the suites can assert there are none), and where to resume
//! is what a real device would send.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use push_client::{Cursors, Subscription};
use push_proto::push::v1::{Cursor, HistoryState, Message, SubscribeRequest};
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::{Status, transport::Channel};

use crate::{client::channel, wait::eventually};

/// A device's open stream. Its messages are read in the background: into a queue that
/// [`Device::next`] takes from, and into a record of everything received and of where
/// to resume ([`Device::cursors`]). Dropping the device closes the stream.
pub struct Device {
    rx: mpsc::UnboundedReceiver<Result<Message, Status>>,
    task: JoinHandle<()>,
    record: Arc<Mutex<Record>>,
}

/// Where a device connects: a gateway's address (a connection of its own) or a
/// channel (shared by many devices, or a TLS one).
pub enum Target {
    Addr(SocketAddr),
    Channel(Channel),
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Target::Addr(addr)
    }
}

impl From<Channel> for Target {
    fn from(channel: Channel) -> Self {
        Target::Channel(channel)
    }
}

/// How a device subscribes beyond user and device: cursors to resume from, and a
/// bearer credential. `Device::options().cursors(c).connect(addr, user, device)`.
#[derive(Default)]
pub struct DeviceOptions {
    cursors: Vec<Cursor>,
    bearer: Option<String>,
    strict: bool,
}

impl DeviceOptions {
    /// Resumes from `cursors` (e.g. another device's [`Device::cursors`]).
    pub fn cursors(mut self, cursors: Vec<Cursor>) -> Self {
        self.cursors = cursors;
        self
    }

    /// Asks for strict resume: fail rather than continue after a gap.
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Sends `authorization: Bearer <bearer>` (a device token or an API key).
    pub fn bearer(mut self, bearer: &str) -> Self {
        self.bearer = Some(bearer.to_owned());
        self
    }

    /// Opens `Subscribe` for `user`/`device`; returns once the stream is established
    /// (the gateway answered with its headers), or the status it was refused with.
    pub async fn connect(self, to: impl Into<Target>, user: &str, device: &str) -> Result<Device, Status> {
        let channel = match to.into() {
            Target::Addr(addr) => channel(addr).await,
            Target::Channel(channel) => channel,
        };
        let req = SubscribeRequest {
            user_id: user.into(),
            device_id: device.into(),
            cursors: self.cursors,
            strict_resume: self.strict,
        };
        let stream = Subscription::open(channel, self.bearer.as_deref(), req).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let record = Arc::new(Mutex::new(Record::default()));
        let task = tokio::spawn(read(stream, tx, record.clone()));
        Ok(Device { rx, task, record })
    }
}

/// What a device remembers: where it stands ([`Cursors`]), every HistoryState it was
/// sent, and every message as it came.
#[derive(Default)]
struct Record {
    cursors: Cursors,
    states: Vec<HistoryState>,
    received: Vec<Received>,
}

/// A message as received: (audience, group id, message id, topic).
pub type Received = (i32, String, String, String);

/// Reads the stream until it ends, recording into `record` and queueing into `tx`.
async fn read(
    mut stream: Subscription,
    tx: mpsc::UnboundedSender<Result<Message, Status>>,
    record: Arc<Mutex<Record>>,
) {
    loop {
        match stream.next().await {
            Ok(Some(item)) => {
                record.lock().unwrap().record(&item.states, &item.messages);
                for m in item.messages {
                    if tx.send(Ok(m)).is_err() {
                        return;
                    }
                }
            }
            Ok(None) => return,
            Err(s) => {
                let _ = tx.send(Err(s));
                return;
            }
        }
    }
}

impl Record {
    /// Records one item: states first, then messages. A duplicate is recorded as
    /// received (the suites look for them) and does not move the cursors.
    fn record(&mut self, states: &[HistoryState], messages: &[Message]) {
        for s in states {
            self.cursors.apply_state(s);
            self.states.push(s.clone());
        }
        for m in messages {
            self.cursors.apply_message(m);
            self.received.push((m.audience, m.group_id.clone(), m.id.clone(), m.topic.clone()));
        }
    }
}

impl Device {
    /// Opens `Subscribe` for `user`/`device` on the gateway at `to` (an address or a
    /// channel), from the device's acknowledged positions or from now. For cursors or a
    /// credential, see [`Device::options`].
    pub async fn connect(to: impl Into<Target>, user: &str, device: &str) -> Result<Device, Status> {
        Self::options().connect(to, user, device).await
    }

    /// Options for a stream that resumes from cursors or sends a credential.
    pub fn options() -> DeviceOptions {
        DeviceOptions::default()
    }

    /// Where to resume: a cursor per history this device has been told about (and has not
    /// been told it left).
    pub fn cursors(&self) -> Vec<Cursor> {
        self.record.lock().unwrap().cursors.cursors()
    }

    /// Every message received so far: (audience, group id, message id, topic).
    pub fn received(&self) -> Vec<Received> {
        self.record.lock().unwrap().received.clone()
    }

    /// The topics of every message received so far, in order.
    pub fn topics(&self) -> Vec<String> {
        self.record.lock().unwrap().received.iter().map(|r| r.3.clone()).collect()
    }

    /// How many messages were received so far.
    pub fn received_count(&self) -> usize {
        self.record.lock().unwrap().received.len()
    }

    /// True once the stream has ended (its reader stopped).
    pub fn ended(&self) -> bool {
        self.task.is_finished()
    }

    /// The HistoryStates received so far.
    pub fn states(&self) -> Vec<HistoryState> {
        self.record.lock().unwrap().states.clone()
    }

    /// Waits (up to 10 s) until the stream has reported a state for `n` histories (that it
    /// still follows).
    pub async fn wait_states(&self, n: usize) {
        eventually(Duration::from_secs(10), &format!("history states for {n} histories"), async || {
            let have = self.record.lock().unwrap().cursors.len();
            (have >= n, have)
        })
        .await;
    }

    /// The next message (panics after 10 s, or if the stream ended).
    pub async fn next(&mut self) -> Message {
        self.next_within(Duration::from_secs(10)).await.expect("no message within 10 s")
    }

    /// The next message if one comes within `within` (panics if the stream ended).
    pub async fn next_within(&mut self, within: Duration) -> Option<Message> {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Ok(Some(Ok(m))) => Some(m),
            Ok(Some(Err(s))) => panic!("stream ended with {s:?}"),
            Ok(None) => panic!("stream ended"),
            Err(_) => None,
        }
    }

    /// How the stream ended: waits (up to 10 s) for its status, skipping messages.
    pub async fn end(&mut self) -> Option<Status> {
        let status = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.rx.recv().await {
                    Some(Ok(_)) => continue,
                    Some(Err(s)) => return Some(s),
                    None => return None,
                }
            }
        });
        status.await.expect("the stream did not end within 10 s")
    }

    /// Every message received so far, without waiting.
    pub fn drain(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        while let Ok(Ok(m)) = self.rx.try_recv() {
            out.push(m);
        }
        out
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("received", &self.received_count()).finish()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}
