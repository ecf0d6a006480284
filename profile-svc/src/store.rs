//! Every Redis command of profile-svc, behind typed methods.
//!
//! A profile is one HASH (`Keys::profile`): `v` the version, `ct`/`ut` create and
//! update times (ms, Redis `TIME`), `f:NAME` the well-known fields and `a:KEY` the free
//! attributes, so attribute keys can never collide with our own fields. Writes are Lua
//! scripts, so the version check and the write are one atomic step.
use push_common::redis::Pool;
use push_common::{Error, ids::UserId, keys::Keys, time::ms_to_timestamp};
use push_proto::profile::v1 as pb;
use redis::Script;

/// Prefix of well-known fields in the HASH.
const FIELD: &str = "f:";
/// Prefix of free attributes in the HASH.
const ATTR: &str = "a:";

/// `chunked(cmd, key, list, first)` runs `cmd key …` over `list[first..]` in slices of
/// 512 values (an even number, so field/value pairs stay together). Lua's `unpack` fails
/// past ~8,000 values (the C stack limit), and a script that fails after its first write
/// leaves that write in place: no script may `unpack` a list whose length it does not
/// bound.
macro_rules! chunked {
    () => {
        r"
local function chunked(cmd, key, list, first)
  for i = first, #list, 512 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 511, #list)))
  end
end
"
    };
}

/// Replace the whole profile. KEYS: profile. ARGV: expected version (0 = any), then
/// field/value pairs. Returns {0, version, hash} or {-1, current version}.
const PUT: &str = concat!(
    chunked!(),
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local expected = tonumber(ARGV[1])
if expected ~= 0 and expected ~= cur then return {-1, cur, {}} end
local ct = redis.call('HGET', KEYS[1], 'ct') or now
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', cur + 1, 'ct', ct, 'ut', now)
chunked('HSET', KEYS[1], ARGV, 2)
return {0, cur + 1, redis.call('HGETALL', KEYS[1])}
"
);

/// Partial update. KEYS: profile. ARGV: expected version (0 = any), max attributes,
/// '1' to drop every attribute first, number of sets N, N field/value pairs, then the
/// fields to delete. Returns {0, version, hash}, {-1, current version} on a version
/// conflict, {-2, 0} when there is no profile, {-3, count} when the attributes would
/// exceed the limit; nothing is written unless the answer is 0.
const UPDATE: &str = concat!(
    chunked!(),
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2, 0, {}} end
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local expected = tonumber(ARGV[1])
if expected ~= 0 and expected ~= cur then return {-1, cur, {}} end
local fields = redis.call('HKEYS', KEYS[1])
local attrs, n = {}, 0
if ARGV[3] ~= '1' then
  for _, f in ipairs(fields) do
    if string.sub(f, 1, 2) == 'a:' then attrs[f] = true; n = n + 1 end
  end
end
local nsets = tonumber(ARGV[4])
local sets = {}
for i = 0, nsets - 1 do
  local f = ARGV[5 + 2 * i]
  sets[#sets + 1] = f
  sets[#sets + 1] = ARGV[6 + 2 * i]
  if string.sub(f, 1, 2) == 'a:' and not attrs[f] then attrs[f] = true; n = n + 1 end
end
local dels = {}
for i = 5 + 2 * nsets, #ARGV do
  dels[#dels + 1] = ARGV[i]
  if attrs[ARGV[i]] then attrs[ARGV[i]] = nil; n = n - 1 end
end
if n > tonumber(ARGV[2]) then return {-3, n, {}} end
-- Every check is done: from here on nothing can fail halfway.
if ARGV[3] == '1' then
  for _, f in ipairs(fields) do
    if string.sub(f, 1, 2) == 'a:' then redis.call('HDEL', KEYS[1], f) end
  end
end
chunked('HDEL', KEYS[1], dels, 1)
redis.call('HSET', KEYS[1], 'v', cur + 1, 'ut', now)
chunked('HSET', KEYS[1], sets, 1)
return {0, cur + 1, redis.call('HGETALL', KEYS[1])}
"
);

/// Delete. KEYS: profile. ARGV: expected version (0 = any).
/// Returns {0, version}, {-1, current version} on a version conflict, {-2, 0} when
/// there is no profile.
const DELETE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2, 0} end
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local expected = tonumber(ARGV[1])
if expected ~= 0 and expected ~= cur then return {-1, cur} end
redis.call('DEL', KEYS[1])
return {0, cur}
";

/// A profile as stored: the raw HASH fields (this module's business alone).
type Hash = Vec<(String, String)>;

/// A field of a profile, as the service names it; only the store knows its HASH field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    DisplayName,
    AvatarUrl,
    Address,
    Attribute(String),
}

impl Field {
    /// The well-known fields.
    pub const WELL_KNOWN: [Field; 3] = [Field::DisplayName, Field::AvatarUrl, Field::Address];

    /// Its name in an update mask.
    pub fn path(&self) -> &str {
        match self {
            Field::DisplayName => "display_name",
            Field::AvatarUrl => "avatar_url",
            Field::Address => "address",
            Field::Attribute(k) => k,
        }
    }

    /// Its value in a profile ('' for unset).
    pub fn value<'p>(&self, p: &'p pb::UserProfile) -> &'p str {
        match self {
            Field::DisplayName => &p.display_name,
            Field::AvatarUrl => &p.avatar_url,
            Field::Address => &p.address,
            Field::Attribute(k) => p.attributes.get(k).map_or("", String::as_str),
        }
    }

    fn hash_field(&self) -> String {
        match self {
            Field::Attribute(k) => format!("{ATTR}{k}"),
            well_known => format!("{FIELD}{}", well_known.path()),
        }
    }
}

/// A partial update.
#[derive(Debug, Default)]
pub struct Patch {
    /// Drop every attribute before applying `set`/`delete`.
    pub clear_attributes: bool,
    pub set: Vec<(Field, String)>,
    pub delete: Vec<Field>,
}

/// The HASH fields of a whole profile (empty values are left out: empty means unset).
fn hash_fields(p: &pb::UserProfile) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Field::WELL_KNOWN
        .iter()
        .filter(|f| !f.value(p).is_empty())
        .map(|f| (f.hash_field(), f.value(p).to_owned()))
        .collect();
    out.extend(p.attributes.iter().map(|(k, v)| (format!("{ATTR}{k}"), v.clone())));
    out
}

/// A stored HASH → the message.
fn from_hash(user_id: &str, hash: Hash) -> pb::UserProfile {
    let mut p = pb::UserProfile { user_id: user_id.to_owned(), ..Default::default() };
    let mut attributes = std::collections::HashMap::new();
    for (k, v) in hash {
        match k.as_str() {
            "v" => p.version = v.parse().unwrap_or_default(),
            "ct" => p.create_time = v.parse().ok().map(ms_to_timestamp),
            "ut" => p.update_time = v.parse().ok().map(ms_to_timestamp),
            _ => match k.strip_prefix(ATTR) {
                Some(a) => {
                    attributes.insert(a.to_owned(), v);
                }
                None => match k.strip_prefix(FIELD) {
                    Some("display_name") => p.display_name = v,
                    Some("avatar_url") => p.avatar_url = v,
                    Some("address") => p.address = v,
                    _ => {}
                },
            },
        }
    }
    p.attributes = attributes;
    p
}

/// Typed access to profiles.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    keys: Keys,
    put: Script,
    update: Script,
    delete: Script,
}

impl Store {
    pub fn new(pool: Pool, keys: Keys) -> Self {
        Self { pool, keys, put: Script::new(PUT), update: Script::new(UPDATE), delete: Script::new(DELETE) }
    }

    /// Replaces the profile with `p` if it is at `p.version` (0: unconditionally);
    /// returns it as stored.
    #[tracing::instrument(skip(self, p), fields(user = p.user_id), err)]
    pub async fn put(&self, user: &UserId, p: &pb::UserProfile) -> Result<pb::UserProfile, Error> {
        let mut inv = self.put.key(self.keys.profile(user));
        inv.arg(p.version);
        for (f, v) in hash_fields(p) {
            inv.arg(f).arg(v);
        }
        let mut c = self.pool.get();
        let (code, version, hash): (i64, i64, Hash) = inv.invoke_async(&mut c).await?;
        outcome(user, code, version, hash)
    }

    /// Applies `patch` to an existing profile.
    #[tracing::instrument(skip(self, patch), err)]
    pub async fn update(
        &self,
        user: &UserId,
        expected: i64,
        max_attributes: usize,
        patch: Patch,
    ) -> Result<pb::UserProfile, Error> {
        let mut inv = self.update.key(self.keys.profile(user));
        inv.arg(expected).arg(max_attributes).arg(if patch.clear_attributes { "1" } else { "0" }).arg(patch.set.len());
        for (f, v) in patch.set {
            inv.arg(f.hash_field()).arg(v);
        }
        for f in patch.delete {
            inv.arg(f.hash_field());
        }
        let mut c = self.pool.get();
        let (code, n, hash): (i64, i64, Hash) = inv.invoke_async(&mut c).await?;
        if code == -3 {
            return Err(Error::invalid(
                "profile.attributes",
                format!("the profile would have {n} attributes, more than the limit of {max_attributes}"),
            ));
        }
        outcome(user, code, n, hash)
    }

    /// Profiles of many users in one round trip (a pipeline of HGETALL, one per slot on
    /// a Cluster); None for a user without one.
    #[tracing::instrument(skip(self, users), fields(users = users.len()), err)]
    pub async fn get(&self, users: &[UserId]) -> Result<Vec<Option<pb::UserProfile>>, Error> {
        let mut batch = push_common::redis::Batch::new();
        for u in users {
            let key = self.keys.profile(u);
            batch.add(&key, redis::cmd("HGETALL").arg(&key).to_owned());
        }
        let hashes: Vec<Hash> = batch.query(&self.pool).await?;
        Ok(users.iter().zip(hashes).map(|(u, h)| (!h.is_empty()).then(|| from_hash(u, h))).collect())
    }

    /// Deletes a profile; `expected` 0 means unconditionally.
    #[tracing::instrument(skip(self), err)]
    pub async fn delete(&self, user: &UserId, expected: i64) -> Result<(), Error> {
        let mut c = self.pool.get();
        let (code, version): (i64, i64) =
            self.delete.key(self.keys.profile(user)).arg(expected).invoke_async(&mut c).await?;
        outcome(user, code, version, Vec::new()).map(drop)
    }
}

fn outcome(user: &str, code: i64, version: i64, hash: Hash) -> Result<pb::UserProfile, Error> {
    match code {
        0 => Ok(from_hash(user, hash)),
        -1 => Err(Error::Aborted(format!(
            "profile of {user:?} is at version {version}, not the version given; re-read and retry"
        ))),
        -2 => Err(Error::NotFound(format!("user {user:?} has no profile"))),
        other => Err(Error::Protocol(format!("profile script returned {other}"))),
    }
}
