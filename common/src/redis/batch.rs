//! Running many commands or script runs at once, on any topology: one pipeline on a
//! single server, one per hash slot (sent concurrently) on a Cluster.
use std::{collections::HashMap, sync::Arc};

use super::Pool;

/// The hash slot of a key in Redis Cluster: CRC16/XMODEM of its hash tag (the part
/// between the first `{` and the next `}`, when not empty) or of the whole key, mod 16384.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter().position(|&b| b == b'}').filter(|&close| close > 0).map(|close| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % 16384
}

/// Commands run as pipelines grouped by hash slot: one pipeline on a single server, one
/// per slot on a Cluster (sent concurrently). Replies come back in the order added.
#[derive(Default)]
pub struct Batch {
    cmds: Vec<(u16, redis::Cmd)>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a command whose keys are all in `key`'s slot.
    pub fn add(&mut self, key: &str, cmd: redis::Cmd) -> &mut Self {
        self.cmds.push((slot(key.as_bytes()), cmd));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// Runs every command; fails as a whole when a pipeline cannot be sent. A command
    /// that Redis refuses answers `Value::ServerError` in its place.
    pub async fn run(self, pool: &Pool) -> redis::RedisResult<Vec<redis::Value>> {
        let slots: Vec<u16> = self.cmds.iter().map(|(s, _)| *s).collect();
        let cmds: Vec<redis::Cmd> = self.cmds.into_iter().map(|(_, c)| c).collect();
        by_slot(pool, &slots, |idx| {
            let mut pipe = redis::pipe();
            for &i in idx {
                pipe.add_command(cmds[i].clone());
            }
            pipe.ignore_errors();
            pipe
        })
        .await
        .map(|replies| replies.into_iter().map(|r| r.unwrap_or(redis::Value::Nil)).collect())
    }
}

impl Batch {
    /// Runs every command and reads each reply as a `T` (a refused command fails it).
    pub async fn query<T: redis::FromRedisValue>(self, pool: &Pool) -> redis::RedisResult<Vec<T>> {
        let replies = self.run(pool).await?;
        replies.into_iter().map(|v| redis::from_redis_value(v).map_err(Into::into)).collect()
    }
}

/// Runs `pipeline(indexes)` once per group of `slots` (one group unless on a Cluster),
/// concurrently, and puts the replies back in the order of `slots`. A pipeline may start
/// with ignored commands; it must answer one reply per index otherwise.
async fn by_slot<F>(pool: &Pool, slots: &[u16], pipeline: F) -> redis::RedisResult<Vec<Option<redis::Value>>>
where
    F: Fn(&[usize]) -> redis::Pipeline,
{
    let groups: Vec<Vec<usize>> = if pool.is_cluster() {
        let mut by: HashMap<u16, Vec<usize>> = HashMap::new();
        for (i, s) in slots.iter().enumerate() {
            by.entry(*s).or_default().push(i);
        }
        by.into_values().collect()
    } else {
        vec![(0..slots.len()).collect()]
    };
    let runs = groups.iter().map(|idx| {
        let pipe = pipeline(idx);
        let mut c = pool.get();
        async move { pipe.query_async::<Vec<redis::Value>>(&mut c).await }
    });
    let replies = futures_util::future::join_all(runs).await;
    let mut out: Vec<Option<redis::Value>> = vec![None; slots.len()];
    for (idx, reply) in groups.iter().zip(replies) {
        let reply = reply?;
        if reply.len() != idx.len() {
            return Err(redis::RedisError::from((redis::ErrorKind::Parse, "pipeline reply has the wrong length")));
        }
        for (&i, v) in idx.iter().zip(reply) {
            out[i] = Some(v);
        }
    }
    Ok(out)
}

/// A Lua script that also runs many times in one pipeline (a batch of pushes, a round
/// of renewals), each run its own atomic step with its own answer.
#[derive(Clone)]
pub struct PipelinedScript {
    script: redis::Script,
    code: Arc<str>,
}

impl PipelinedScript {
    pub fn new(code: &str) -> Self {
        Self { script: redis::Script::new(code), code: code.into() }
    }

    /// The script, for one run (`EVALSHA`, loading it on NOSCRIPT).
    pub fn script(&self) -> &redis::Script {
        &self.script
    }

    /// Runs the script once per `(keys, args)`, one answer each, in order: in one
    /// pipeline, or on a Cluster one per slot of the runs' first keys (each run's keys
    /// must share a slot). Each pipeline loads the script first (a no-op when cached): a
    /// NOSCRIPT halfway could not be retried safely once some runs had happened. Runs of
    /// one slot keep their order; runs of different slots are independent.
    pub async fn run_many<K, S, A, T>(
        &self,
        pool: &Pool,
        runs: &[(K, A)],
    ) -> redis::RedisResult<Vec<redis::RedisResult<T>>>
    where
        K: AsRef<[S]>,
        S: redis::ToRedisArgs + AsRef<str>,
        A: redis::ToRedisArgs,
        T: redis::FromRedisValue,
    {
        let slots: Vec<u16> =
            runs.iter().map(|(keys, _)| keys.as_ref().first().map_or(0, |k| slot(k.as_ref().as_bytes()))).collect();
        let replies = by_slot(pool, &slots, |idx| {
            let mut pipe = redis::pipe();
            pipe.cmd("SCRIPT").arg("LOAD").arg(&*self.code).ignore();
            for &i in idx {
                let (keys, args) = &runs[i];
                let keys = keys.as_ref();
                pipe.cmd("EVALSHA").arg(self.script.get_hash()).arg(keys.len()).arg(keys).arg(args);
            }
            pipe.ignore_errors();
            pipe
        })
        .await?;
        Ok(replies
            .into_iter()
            .map(|v| redis::from_redis_value(v.unwrap_or(redis::Value::Nil)).map_err(Into::into))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::slot;

    #[test]
    fn slots_follow_redis_cluster() {
        // Values from Redis's CLUSTER KEYSLOT.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"123456789"), 0x31c3);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"push:inbox:{u:alice}"), slot(b"u:alice"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot(b"foo{}{bar}"), crc16::State::<crc16::XMODEM>::calculate(b"foo{}{bar}") % 16384);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }
}
