//! The load generator's workers: a reader per stream and the pushers.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use push_common::auth::SendBearer;
use push_proto::push::v1::{self as pb, push_gateway_client::PushGatewayClient};
use tonic::transport::{Channel, Endpoint};

use super::{Args, Mode, Shared, count, group, now_ns, user};

pub(crate) type Client = PushGatewayClient<tonic::service::interceptor::InterceptedService<Channel, SendBearer>>;

/// A gateway client that sends the `--bearer` credential with every call.
pub(crate) fn client(channel: Channel, bearer: &Option<String>) -> Client {
    // Checked for ASCII in main, right after the arguments are read.
    let bearer = SendBearer::new(bearer.as_deref()).unwrap_or_else(|_| SendBearer::new(None).expect("no token"));
    PushGatewayClient::with_interceptor(channel, bearer).max_decoding_message_size(16 << 20)
}

pub(crate) async fn connect(target: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(target.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .connect()
        .await?)
}

/// Reads one stream until it ends, recording every delivery.
pub(crate) async fn read(
    shared: Arc<Shared>,
    shard: usize,
    mut stream: tonic::Streaming<push_proto::wire::SubscribeResponse>,
) {
    loop {
        match stream.message().await {
            Ok(Some(item)) => {
                let now = now_ns();
                let mut h = shared.latency[shard].lock().unwrap_or_else(|e| e.into_inner());
                for m in &item.messages {
                    let p = &m.payload;
                    if p.len() < 16 {
                        continue;
                    }
                    let seq = u64::from_be_bytes(p[..8].try_into().unwrap_or_default()) as usize;
                    let sent = u64::from_be_bytes(p[8..16].try_into().unwrap_or_default());
                    let _ = h.record((now.saturating_sub(sent) / 1000).max(1));
                    if let Some(slot) = shared.last_rx.get(seq) {
                        slot.fetch_max(now, Relaxed);
                    }
                }
                drop(h);
                shared.deliveries.fetch_add(item.messages.len() as u64, Relaxed);
                shared.last_receipt.fetch_max(now, Relaxed);
            }
            Ok(None) => {
                count(&shared.stream_errors, "ended".into());
                break;
            }
            Err(s) => {
                count(&shared.stream_errors, format!("{:?}", s.code()));
                break;
            }
        }
    }
    shared.open_streams.fetch_sub(1, Relaxed);
}

/// A small xorshift: the loadgen needs cheap spread, not cryptographic randomness.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

pub(crate) async fn push_loop(args: Arc<Args>, shared: Arc<Shared>, next: Arc<AtomicU64>, start: Instant, id: usize) {
    let Ok(channel) = connect(&args.target).await else {
        count(&shared.push_errors, "connect".into());
        return;
    };
    let mut c = client(channel, &args.bearer);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    loop {
        let seq = next.fetch_add(1, Relaxed) as usize;
        if seq >= args.max_pushes || start.elapsed() >= args.duration {
            break;
        }
        if args.rate > 0.0 {
            let at = start + Duration::from_secs_f64(seq as f64 / args.rate);
            if at.duration_since(start) >= args.duration {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
        }
        let sent = now_ns();
        let mut payload = vec![0u8; args.payload.max(16)];
        payload[..8].copy_from_slice(&(seq as u64).to_be_bytes());
        payload[8..16].copy_from_slice(&sent.to_be_bytes());
        shared.sent[seq].store(sent, Relaxed);
        shared.first_send.fetch_min(sent, Relaxed);
        let topic = "loadgen".to_string();
        let (result, receivers) = match args.mode {
            Mode::All => {
                let r = c.push_to_all(pb::PushToAllRequest { topic, payload: payload.into(), ..Default::default() });
                // Every stream that opened (some may have failed to).
                (r.await.map(drop), shared.opened.load(Relaxed) as u64)
            }
            Mode::Users => {
                let user_ids: Vec<String> =
                    (0..args.users_per_push).map(|_| user(&args, rng.below(args.streams))).collect();
                let mut distinct = user_ids.clone();
                distinct.sort();
                distinct.dedup();
                let n = distinct.len() as u64;
                let req = pb::PushToUsersRequest { user_ids, topic, payload: payload.into(), ..Default::default() };
                (c.push_to_users(req).await.map(drop), n)
            }
            Mode::Groups => {
                let g = rng.below(args.groups);
                let req = pb::PushToGroupRequest {
                    group_id: group(&args, g),
                    topic,
                    payload: payload.into(),
                    ..Default::default()
                };
                (c.push_to_group(req).await.map(drop), shared.group_opened[g].load(Relaxed))
            }
        };
        match result {
            Ok(()) => {
                shared.pushed.fetch_add(1, Relaxed);
                shared.expected.fetch_add(receivers, Relaxed);
            }
            Err(s) => {
                shared.sent[seq].store(0, Relaxed);
                count(&shared.push_errors, format!("{:?}", s.code()));
            }
        }
    }
}
