//! The push path: a push's targets appended to their histories and published, in one
//! atomic step per hash slot (one in all unless on a Cluster), with its idempotency
//! record.
use push_common::{Error, keys::Keys, redis::Batch};

use super::{Push, Store};
use crate::history::StreamId;

impl Store {
    /// Appends `message` (encoded without its id) to every target history and publishes
    /// it on the target's channel, in one atomic step; with an idempotency key (the
    /// caller's API key name and the request's key), only if it was not used within its
    /// window. Returns the message id (the first push's, for a repeated key).
    ///
    /// On a Cluster, targets in different slots are pushed in one step per slot (see
    /// [`Store::push_many`]).
    #[tracing::instrument(skip_all, fields(targets = p.targets.len()), err)]
    pub async fn push(&self, p: &Push) -> Result<String, Error> {
        let parts = self.parts(p);
        if parts.len() > 1 {
            let mut ids = self.push_many(std::slice::from_ref(p)).await?;
            return ids.pop().unwrap_or_else(|| Err(Error::Protocol("a push without an answer".into())));
        }
        let (keys, args) = self.push_args(p, &p.targets, None);
        let mut inv = self.push.script().prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        for a in &args {
            inv.arg(a);
        }
        let mut c = self.pool.get();
        Ok(inv.invoke_async(&mut c).await?)
    }

    /// Runs many pushes in one pipeline (one per slot on a Cluster), each its own atomic
    /// step, in order within a slot (so a repeated idempotency key within the batch
    /// returns the first one's id). One answer per push; a connection failure fails
    /// them all.
    ///
    /// On a Cluster a push whose targets span slots is one step per slot, each with its
    /// own idempotency record (so a retry with the key completes what a failure left
    /// undone and repeats nothing). They share one id: the histories' last ids are read
    /// first and every step is given an id above all of them (`floor`). A push that
    /// races another into one of the histories between the read and the write gets a
    /// later id there; the answer is the first step's id.
    #[tracing::instrument(skip_all, fields(pushes = pushes.len()), err)]
    pub async fn push_many(&self, pushes: &[Push]) -> Result<Vec<Result<String, Error>>, Error> {
        if pushes.is_empty() {
            return Ok(Vec::new());
        }
        let parts: Vec<Vec<&[(String, String)]>> = pushes.iter().map(|p| self.parts(p)).collect();
        let floors = self.floors(pushes, &parts).await?;
        let mut runs = Vec::new();
        let mut owner = Vec::new();
        for (i, (p, parts)) in pushes.iter().zip(&parts).enumerate() {
            for targets in parts {
                runs.push(self.push_args(p, targets, floors[i].as_deref()));
                owner.push(i);
            }
        }
        let replies: Vec<redis::RedisResult<String>> = self.push.run_many(&self.pool, &runs).await?;
        let mut out: Vec<Option<Result<String, Error>>> = (0..pushes.len()).map(|_| None).collect();
        for (i, reply) in owner.into_iter().zip(replies) {
            match (&out[i], reply) {
                (None, r) => out[i] = Some(r.map_err(Error::from)),
                (Some(Ok(_)), Err(e)) => out[i] = Some(Err(e.into())),
                _ => {}
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Protocol("a push without an answer".into()))))
            .collect())
    }

    /// A push's targets grouped by slot: all of them at once unless on a Cluster.
    fn parts<'p>(&self, p: &'p Push) -> Vec<&'p [(String, String)]> {
        if !self.pool.is_cluster() || p.targets.len() < 2 {
            return vec![&p.targets[..]];
        }
        // One part per run of adjacent targets that share a slot: users arrive sorted by
        // id, so the slots of a large push are nearly all different anyway.
        let slot = |t: &(String, String)| push_common::redis::slot(t.0.as_bytes());
        p.targets.chunk_by(|a, b| slot(a) == slot(b)).collect()
    }

    /// Per push spanning slots, an id above every target history's last id and the
    /// gateway's clock; None for the others.
    async fn floors(&self, pushes: &[Push], parts: &[Vec<&[(String, String)]>]) -> Result<Vec<Option<String>>, Error> {
        let mut batch = Batch::new();
        for (p, parts) in pushes.iter().zip(parts) {
            if parts.len() > 1 {
                for (stream, _) in &p.targets {
                    batch.add(stream, redis::cmd("HGET").arg(Keys::history_meta(stream)).arg("last").to_owned());
                }
            }
        }
        if batch.is_empty() {
            return Ok(vec![None; pushes.len()]);
        }
        let mut lasts = batch.query::<Option<String>>(&self.pool).await?.into_iter();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
        let mut floors = Vec::with_capacity(pushes.len());
        for (p, parts) in pushes.iter().zip(parts) {
            if parts.len() < 2 {
                floors.push(None);
                continue;
            }
            let mut floor: StreamId = format!("{now}-0").parse().map_err(|_| Error::Protocol("clock".into()))?;
            for last in lasts.by_ref().take(p.targets.len()).flatten() {
                if let Ok(last) = last.parse::<StreamId>() {
                    floor = floor.max(last.next());
                }
            }
            floors.push(Some(floor.to_string()));
        }
        Ok(floors)
    }

    /// The push script's keys and arguments for `targets` of `p` (see `lua/push.lua`).
    fn push_args(&self, p: &Push, targets: &[(String, String)], floor: Option<&str>) -> (Vec<String>, Vec<Vec<u8>>) {
        let r = &self.retention;
        let mut keys = Vec::with_capacity(targets.len() * 2 + 1);
        for (stream, _) in targets {
            keys.push(stream.clone());
            keys.push(Keys::history_meta(stream));
        }
        let window = match (&p.idempotency, targets.first()) {
            (Some((caller, key, window)), Some((first, _))) => {
                keys.push(self.keys.idempotency(first, caller.as_ref(), key));
                window.as_millis().max(1) as u64
            }
            _ => 0,
        };
        let num = |n: u64| n.to_string().into_bytes();
        let mut args = vec![
            num(targets.len() as u64),
            num(window),
            num(p.max_len as u64),
            num(r.max_age.as_millis() as u64),
            num(r.meta_ttl.as_millis() as u64),
            p.message.clone(),
        ];
        // Each channel with how to publish on it ('S': SPUBLISH, 'P': PUBLISH).
        let cluster = self.pool.is_cluster();
        args.extend(targets.iter().map(|(_, channel)| {
            let how = if self.keys.publish_command(channel, cluster) == "SPUBLISH" { "S" } else { "P" };
            format!("{how}{channel}").into_bytes()
        }));
        args.push(p.excluded.clone().into_bytes());
        args.push(floor.unwrap_or("").as_bytes().to_vec());
        (keys, args)
    }
}
