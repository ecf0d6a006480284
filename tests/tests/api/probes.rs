//! The hub's probes: each replica checks its Pub/Sub link on channels of its own, one on
//! one Redis, and on a Cluster one in each master's slots, so the link to every shard is
//! checked. Runs on either (`PUSH_TEST_REDIS=cluster`), asserting what each must show.
use std::{collections::BTreeSet, time::Duration};

use push_tests::{App, RedisServer, always, eventually, fixtures::subscribed};

/// How long a replica is watched for a restart of its link: four probe intervals of the
/// harness (500 ms), each of which sends a probe on every probe channel.
const PROBES_ANSWERED: Duration = Duration::from_secs(2);
/// How long a stopped replica may take to let its channels go.
const STOPPED: Duration = Duration::from_secs(10);

/// The replica and the number of a probe channel: `push:ch:probe:{R}` on one Redis,
/// `push:ch:probe:{R.N}` on a Cluster.
fn parse(channel: &str) -> (String, Option<u32>) {
    let tag = channel.strip_prefix("push:ch:probe:{").and_then(|t| t.strip_suffix('}'));
    let tag = tag.unwrap_or_else(|| panic!("not a probe channel: {channel}"));
    match tag.split_once('.') {
        Some((replica, n)) => (replica.to_owned(), Some(n.parse().unwrap_or_else(|_| panic!("{channel}")))),
        None => (tag.to_owned(), None),
    }
}

/// The probe channels with subscribers on each master (on one Redis, its one server):
/// shard channels on a Cluster, classic ones otherwise. Each sorted.
fn probe_channels(redis: &RedisServer) -> Vec<Vec<String>> {
    let kind = if redis.is_cluster() { "SHARDCHANNELS" } else { "CHANNELS" };
    let cmd = redis::cmd("PUBSUB").arg(kind).arg("push:ch:probe:*").to_owned();
    let mut per_master: Vec<Vec<String>> = redis.on_masters(&cmd);
    per_master.iter_mut().for_each(|chs| chs.sort());
    per_master
}

/// The replicas with a probe channel on every master, when each master has exactly one
/// channel of each of them (and of the kind the topology calls for); None otherwise.
fn replicas_on_every_master(redis: &RedisServer, per_master: &[Vec<String>]) -> Option<BTreeSet<String>> {
    let replicas: BTreeSet<String> = per_master.iter().flatten().map(|ch| parse(ch).0).collect();
    let each_once = per_master.iter().all(|chs| {
        let mine: Vec<String> = chs.iter().map(|ch| parse(ch).0).collect();
        mine.len() == replicas.len() && mine.iter().cloned().collect::<BTreeSet<_>>() == replicas
    });
    // A numbered tag on a Cluster (one per master), the replica's own tag on one Redis.
    let kind = per_master.iter().flatten().all(|ch| parse(ch).1.is_some() == redis.is_cluster());
    (each_once && kind).then_some(replicas)
}

/// The connections subscribed to anything, per master (`INDEX:ID`): a replica that
/// replaces its link shows up with new ones.
fn subscriber_connections(redis: &RedisServer) -> BTreeSet<String> {
    let lists: Vec<String> = redis.on_masters(&redis::cmd("CLIENT").arg("LIST").to_owned());
    let field = |line: &str, name: &str| -> Option<String> {
        line.split(' ').find_map(|f| f.strip_prefix(name)?.strip_prefix('=').map(str::to_owned))
    };
    let mut ids = BTreeSet::new();
    for (i, list) in lists.iter().enumerate() {
        for line in list.lines() {
            let subscribed = ["sub", "ssub"].iter().any(|k| field(line, k).is_some_and(|n| n != "0"));
            if subscribed && let Some(id) = field(line, "id") {
                ids.insert(format!("{i}:{id}"));
            }
        }
    }
    ids
}

/// Every replica subscribes a probe channel of its own on every master it links to: on
/// a Cluster one in each master's slots (so a shard whose link goes silent is caught),
/// on one Redis exactly one. The probes on all of them come back: an idle link is not
/// replaced. The probe channels are not among the push channels the suites compare.
#[tokio::test]
async fn each_replica_probes_every_shard_it_is_linked_to() {
    let app = App::start().await;
    let other = app.replica(&[]).await;
    let masters = if app.redis.is_cluster() { 3 } else { 1 };

    // SERVING: each replica's link has subscribed its probe channels.
    eventually(Duration::from_secs(10), "two replicas' probe channels on every master", async || {
        let per_master = probe_channels(&app.redis);
        let replicas = replicas_on_every_master(&app.redis, &per_master);
        (per_master.len() == masters && replicas.is_some_and(|r| r.len() == 2), per_master)
    })
    .await;
    let per_master = probe_channels(&app.redis);
    let replicas = replicas_on_every_master(&app.redis, &per_master).unwrap();
    assert_eq!(per_master.iter().flatten().count(), 2 * masters, "{per_master:?}");
    assert_eq!(subscribed(&app.redis), Vec::<String>::new(), "probe channels are no push channels");

    // Every probe on every master comes back: no link is replaced.
    let linked = subscriber_connections(&app.redis);
    assert!(linked.len() >= masters, "{linked:?}");
    always(PROBES_ANSWERED, "the replicas keep their links", async || {
        let now = subscriber_connections(&app.redis);
        (now == linked, now)
    })
    .await;
    assert_eq!(probe_channels(&app.redis), per_master);

    // A replica that stops lets its channels go (a positive control of both checks):
    // one probe channel left on every master, exactly one on one Redis.
    drop(other);
    eventually(STOPPED, "one replica's probe channel left on every master", async || {
        let per_master = probe_channels(&app.redis);
        let left = replicas_on_every_master(&app.redis, &per_master);
        let one = per_master.iter().all(|chs| chs.len() == 1) && left.is_some_and(|r| r.len() == 1);
        (one && subscriber_connections(&app.redis) != linked, per_master)
    })
    .await;
    let left = replicas_on_every_master(&app.redis, &probe_channels(&app.redis)).unwrap();
    assert!(left.is_subset(&replicas), "{left:?} of {replicas:?}");
}
