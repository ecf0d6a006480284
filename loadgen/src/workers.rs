//! The load generator's workers: a reader per stream and the pushers.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use push_client::{Event, Events};
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

/// The gateway as every connection of the run reaches it: windows wide enough that a
/// flat-out broadcast is not throttled by HTTP/2 flow control.
pub(crate) fn endpoint(target: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(target.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20))
}

pub(crate) async fn connect(target: &str) -> anyhow::Result<Channel> {
    Ok(endpoint(target)?.connect().await?)
}

/// Reads one device's events until it stops, recording every delivery. Latencies are
/// gathered per stream item (the messages that arrived together, `buffered() == 0` at
/// the last one) and recorded under one lock, as before the client crate. (An item
/// whose last messages were duplicates would be flushed with the next one; a reconnect
/// resumes from exactly what was handed out, so the load generator gets none.)
pub(crate) async fn read(shared: Arc<Shared>, shard: usize, mut events: Events) {
    // (sequence number, latency in µs) of the current item's messages.
    let mut batch: Vec<(usize, u64)> = Vec::with_capacity(64);
    let (mut now, mut count_in_item) = (0u64, 0u64);
    let mut open = true;
    while let Some(event) = events.recv().await {
        match event {
            Event::Message(m) => {
                if count_in_item == 0 {
                    now = now_ns();
                }
                count_in_item += 1;
                let p = &m.payload;
                if p.len() >= 16 {
                    let seq = u64::from_be_bytes(p[..8].try_into().unwrap_or_default()) as usize;
                    let sent = u64::from_be_bytes(p[8..16].try_into().unwrap_or_default());
                    batch.push((seq, (now.saturating_sub(sent) / 1000).max(1)));
                }
                if events.buffered() == 0 {
                    let mut h = shared.latency[shard].lock().unwrap_or_else(|e| e.into_inner());
                    for (seq, latency) in batch.drain(..) {
                        let _ = h.record(latency);
                        if let Some(slot) = shared.last_rx.get(seq) {
                            slot.fetch_max(now, Relaxed);
                        }
                    }
                    drop(h);
                    shared.deliveries.fetch_add(count_in_item, Relaxed);
                    shared.last_receipt.fetch_max(now, Relaxed);
                    count_in_item = 0;
                }
            }
            Event::Connected { .. } => {
                if !open {
                    open = true;
                    shared.open_streams.fetch_add(1, Relaxed);
                }
            }
            Event::Disconnected { status, .. } => {
                count(&shared.stream_errors, format!("{:?}", status.code()));
                if open {
                    open = false;
                    shared.open_streams.fetch_sub(1, Relaxed);
                }
            }
            Event::Stopped { status, .. } => {
                count(&shared.stream_errors, format!("{:?} (stopped)", status.code()));
                break;
            }
            Event::Gap(_) => count(&shared.stream_errors, "gap".into()),
            Event::Left(_) => {}
        }
    }
    if open {
        shared.open_streams.fetch_sub(1, Relaxed);
    }
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
    // Users mode pushes only to streams that opened: a failed open is not a loss.
    let opened: &[usize] = shared.opened_streams.get().map(Vec::as_slice).unwrap_or_default();
    let pick_user = |rng: &mut Rng| match args.offline_users {
        0 => user(&args, opened.get(rng.below(opened.len())).copied().unwrap_or(0)),
        n => format!("{}-off{}", args.prefix, rng.below(n)),
    };
    let per_call = if args.mode == Mode::Users { args.batch } else { 1 };
    loop {
        let first = next.fetch_add(per_call as u64, Relaxed) as usize;
        if first + per_call > args.max_pushes || start.elapsed() >= args.duration {
            break;
        }
        if args.rate > 0.0 {
            let at = start + Duration::from_secs_f64(first as f64 / args.rate);
            if at.duration_since(start) >= args.duration {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
        }
        let sent = now_ns();
        let payload = |seq: usize| {
            let mut payload = vec![0u8; args.payload.max(16)];
            payload[..8].copy_from_slice(&(seq as u64).to_be_bytes());
            payload[8..16].copy_from_slice(&sent.to_be_bytes());
            payload
        };
        for seq in first..first + per_call {
            shared.sent[seq].store(sent, Relaxed);
        }
        shared.first_send.fetch_min(sent, Relaxed);
        let topic = "loadgen".to_string();
        if per_call > 1 {
            let pushes = (first..first + per_call)
                .map(|seq| pb::PushRequest {
                    target: Some(pb::Target { user_ids: vec![pick_user(&mut rng)], ..Default::default() }),
                    topic: topic.clone(),
                    payload: payload(seq).into(),
                    ..Default::default()
                })
                .collect();
            let answer = c.push_batch(pb::PushBatchRequest { pushes }).await;
            called(&shared, sent);
            let outcomes: Vec<Result<(), String>> = match answer {
                Ok(r) => r
                    .into_inner()
                    .results
                    .into_iter()
                    .map(|r| match r.error {
                        None => Ok(()),
                        Some(e) => Err(format!("{:?}", tonic::Code::from_i32(e.code))),
                    })
                    .collect(),
                Err(s) => vec![Err(format!("{:?}", s.code())); per_call],
            };
            for (k, outcome) in outcomes.into_iter().enumerate() {
                record(&shared, first + k, outcome, u64::from(args.offline_users == 0));
            }
            continue;
        }
        let seq = first;
        let (result, receivers) = match args.mode {
            Mode::All => {
                let r =
                    c.push_to_all(pb::PushToAllRequest { topic, payload: payload(seq).into(), ..Default::default() });
                // Every stream that opened (some may have failed to).
                (r.await.map(drop), shared.opened.load(Relaxed) as u64)
            }
            Mode::Users => {
                let user_ids: Vec<String> = (0..args.users_per_push).map(|_| pick_user(&mut rng)).collect();
                let mut distinct = user_ids.clone();
                distinct.sort();
                distinct.dedup();
                let n = if args.offline_users == 0 { distinct.len() as u64 } else { 0 };
                let req =
                    pb::PushToUsersRequest { user_ids, topic, payload: payload(seq).into(), ..Default::default() };
                (c.push_to_users(req).await.map(drop), n)
            }
            Mode::Groups => {
                let g = rng.below(args.groups);
                let req = pb::PushToGroupRequest {
                    group_id: group(&args, g),
                    topic,
                    payload: payload(seq).into(),
                    ..Default::default()
                };
                (c.push_to_group(req).await.map(drop), shared.group_opened[g].load(Relaxed))
            }
        };
        called(&shared, sent);
        record(&shared, seq, result.map_err(|s| format!("{:?}", s.code())), receivers);
    }
}

/// Records how long a push call sent at `sent` took to be answered.
fn called(shared: &Shared, sent: u64) {
    let took = now_ns().saturating_sub(sent) / 1000;
    let _ = shared.call_latency.lock().unwrap_or_else(|e| e.into_inner()).record(took.max(1));
}

/// Counts push `seq`: its expected deliveries, or its error (and forgets its send time,
/// so its absence is not a fan-out latency).
fn record(shared: &Shared, seq: usize, outcome: Result<(), String>, receivers: u64) {
    match outcome {
        Ok(()) => {
            shared.pushed.fetch_add(1, Relaxed);
            shared.expected.fetch_add(receivers, Relaxed);
        }
        Err(code) => {
            shared.sent[seq].store(0, Relaxed);
            count(&shared.push_errors, code);
        }
    }
}
