//! The two-level cache of upstream answers (SPEC §6): moka in the process, bounded by bytes
//! with a TTL per entry, in front of Redis when it is configured; and single-flight, so that
//! identical calls in flight make one upstream call: in one process through moka's
//! `try_get_with`, across replicas through a short Redis lock and a wait on the result key.
//!
//! Values are kept serialized (JSON), the same bytes in both levels. Errors are never cached.
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use redis::AsyncCommands;
use serde::{Serialize, de::DeserializeOwned};
use tracing::Instrument;

use crate::{
    fault::UpstreamError,
    metrics::{CacheLabels, Metrics, Upstream},
    redis::Redis,
};

/// Where a cached answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// This process: an earlier answer, or an identical call that was in flight.
    Memory,
    /// Redis: an answer another replica (or this one, before a restart) paid for.
    Redis,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
        }
    }
}

/// A cache key: the upstream and a digest of everything that changes the answer.
#[derive(Debug, Clone)]
pub struct Key {
    upstream: &'static str,
    /// `dakota:v1:cache:<upstream>:<sha256>`.
    name: String,
    /// Whether the answer may go to Redis (a job's fetched pages stay in the process).
    shared: bool,
    ttl: Duration,
    /// The largest value taken from Redis (what is there may have been put by anyone).
    max_bytes: usize,
}

impl Key {
    /// The key of a call to `upstream` whose answer depends on `parts` (the endpoint, model,
    /// full request body, index version, ...), kept for `ttl`.
    pub fn new(upstream: &'static str, ttl: Duration, parts: &[&[u8]]) -> Self {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for part in parts {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            digest.update(&(part.len() as u64).to_le_bytes());
            digest.update(part);
        }
        let hex: String = digest
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            upstream,
            name: Redis::key("cache", &format!("{upstream}:{hex}")),
            shared: true,
            ttl,
            max_bytes: DEFAULT_MAX_VALUE_BYTES,
        }
    }

    /// The key with this limit on a value taken from Redis.
    pub fn with_max_bytes(self, max_bytes: usize) -> Self {
        Self { max_bytes, ..self }
    }

    /// An answer kept under this key, decoded.
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, UpstreamError> {
        serde_json::from_slice(bytes).map_err(|e| UpstreamError::Malformed {
            upstream: self.upstream,
            message: format!("a cached answer does not decode: {e}"),
        })
    }

    /// The key kept in this process only.
    pub fn local(self) -> Self {
        Self {
            shared: false,
            ..self
        }
    }
}

/// Whether bytes found in Redis are a value this process can use.
pub type Valid<'a> = &'a (dyn Fn(&[u8]) -> bool + Sync);

#[derive(Clone)]
struct Entry {
    bytes: Bytes,
    ttl: Duration,
}

/// Each entry lives for its own key's TTL.
struct PerEntryTtl;

impl moka::Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _: &String,
        entry: &Entry,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// The largest value taken from Redis unless the key says otherwise.
const DEFAULT_MAX_VALUE_BYTES: usize = 4 << 20;

/// How long a replica's lock on a key lasts: the longest a replica waits for another one's
/// call before it makes its own. Also how long a waiter waits at most.
const LOCK_TTL: Duration = Duration::from_secs(15);
/// How often a replica waiting for another one's call looks for its answer.
const LOCK_POLL: Duration = Duration::from_millis(20);

pub struct Cache {
    memory: moka::future::Cache<String, Entry>,
    redis: Option<Arc<Redis>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("entries", &self.memory.entry_count())
            .field("bytes", &self.memory.weighted_size())
            .finish()
    }
}

impl Cache {
    /// A cache of at most `max_bytes` in the process, over `redis` when configured.
    pub fn new(max_bytes: u64, redis: Option<Arc<Redis>>, metrics: Arc<Metrics>) -> Self {
        let memory = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, entry: &Entry| {
                u32::try_from(key.len() + entry.bytes.len()).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        Self {
            memory,
            redis,
            metrics,
        }
    }

    /// Entries and their bytes in the process.
    pub fn usage(&self) -> (u64, u64) {
        (self.memory.entry_count(), self.memory.weighted_size())
    }

    /// The cached answer of `key`, or `load`'s, cached when it succeeds. With it, the layer it
    /// came from (`None`: this call made the upstream call).
    /// `load` is polled only when the upstream must be called.
    pub async fn get_or_load<T>(
        &self,
        key: &Key,
        load: impl Future<Output = Result<T, UpstreamError>>,
    ) -> (Result<T, UpstreamError>, Option<Layer>)
    where
        T: Serialize + DeserializeOwned,
    {
        // What Redis holds may be from an older build or planted: a value that does not
        // decode is a miss, and the answer called for overwrites it.
        let decodes = |bytes: &[u8]| key.decode::<T>(bytes).is_ok();
        let (bytes, layer) = self.get_or_load_bytes(key, &decodes, load).await;
        (bytes.and_then(|bytes| key.decode(&bytes)), layer)
    }

    /// [`Cache::get_or_load`], the answer as the bytes both levels keep (JSON); a value in
    /// Redis that `valid` refuses counts as a miss.
    pub async fn get_or_load_bytes<T: Serialize>(
        &self,
        key: &Key,
        valid: Valid<'_>,
        load: impl Future<Output = Result<T, UpstreamError>>,
    ) -> (Result<Bytes, UpstreamError>, Option<Layer>) {
        let span = tracing::info_span!(
            "cache",
            upstream = key.upstream,
            cache.layer = tracing::field::Empty
        );
        let (loaded, layer) = self
            .resolve(key, valid, load)
            .instrument(span.clone())
            .await;
        span.record("cache.layer", layer.map_or("none", Layer::as_str));
        (loaded, layer)
    }

    async fn resolve<T: Serialize>(
        &self,
        key: &Key,
        valid: Valid<'_>,
        load: impl Future<Output = Result<T, UpstreamError>>,
    ) -> (Result<Bytes, UpstreamError>, Option<Layer>) {
        if let Some(entry) = self.memory.get(&key.name).await {
            self.count(Layer::Memory, key, true);
            return (Ok(entry.bytes), Some(Layer::Memory));
        }
        self.count(Layer::Memory, key, false);
        // Which call ran the load: the others waited for it (single-flight in the process).
        let ran = AtomicBool::new(false);
        let from_redis = AtomicBool::new(false);
        let loaded = self
            .memory
            .try_get_with(key.name.clone(), async {
                ran.store(true, Ordering::Relaxed);
                let bytes = match self.shared(key, valid).await {
                    Some(bytes) => {
                        from_redis.store(true, Ordering::Relaxed);
                        bytes
                    }
                    None => self.load(key, load).await?,
                };
                Ok::<_, UpstreamError>(Entry {
                    bytes,
                    ttl: key.ttl,
                })
            })
            .await;
        let layer = if !ran.load(Ordering::Relaxed) {
            self.coalesced(key);
            Some(Layer::Memory)
        } else {
            from_redis.load(Ordering::Relaxed).then_some(Layer::Redis)
        };
        match loaded {
            Ok(entry) => (Ok(entry.bytes), layer),
            Err(error) => (Err(UpstreamError::clone(&error)), layer),
        }
    }

    /// The upstream call itself; its answer goes to Redis, and the key's lock is freed either
    /// way so replicas waiting for it go on at once.
    async fn load<T: Serialize>(
        &self,
        key: &Key,
        load: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<Bytes, UpstreamError> {
        let bytes = load.await.and_then(|value| {
            serde_json::to_vec(&value)
                .map(Bytes::from)
                .map_err(|e| UpstreamError::Malformed {
                    upstream: key.upstream,
                    message: format!("cannot cache the answer: {e}"),
                })
        });
        self.store(key, bytes.as_ref().ok()).await;
        bytes
    }

    fn coalesced(&self, key: &Key) {
        self.metrics
            .cache_coalesced
            .get_or_create(&Upstream {
                upstream: key.upstream,
            })
            .inc();
    }

    /// The answer in Redis, waiting a little when another replica holds the key's lock (it
    /// is making the same call). `None`: this process makes the call (and holds the lock).
    async fn shared(&self, key: &Key, valid: Valid<'_>) -> Option<Bytes> {
        let redis = self.redis.as_ref().filter(|_| key.shared)?;
        let found = self.lookup(redis, key, valid).await;
        self.count(Layer::Redis, key, found.is_some());
        if found.is_some() {
            return found;
        }
        let lock = format!("{}:lock", key.name);
        let locked: Option<bool> = redis
            .run("lock", |mut c| {
                let lock = lock.clone();
                async move {
                    redis::cmd("SET")
                        .arg(&lock)
                        .arg(1)
                        .arg("NX")
                        .arg("PX")
                        .arg(LOCK_TTL.as_millis() as u64)
                        .query_async::<Option<String>>(&mut c)
                        .await
                        .map(|ok| ok.is_some())
                }
            })
            .await;
        if locked != Some(false) {
            // Another replica may have stored the answer and freed the lock between our
            // lookup and our lock: look once more before calling.
            let found = if locked == Some(true) {
                self.lookup(redis, key, valid).await
            } else {
                None
            };
            if found.is_some() {
                self.store(key, None).await;
                self.coalesced(key);
            }
            return found;
        }
        // Another replica is calling: wait for its answer while its lock holds.
        let give_up = tokio::time::Instant::now() + LOCK_TTL;
        while tokio::time::Instant::now() < give_up {
            tokio::time::sleep(LOCK_POLL).await;
            // The lock first, then the answer: the holder stores the answer before it frees
            // the lock, so a freed lock seen here means the answer (if any) is already there.
            let held: Option<bool> = redis
                .run("lock", |mut c| {
                    let lock = lock.clone();
                    async move { c.exists(lock).await }
                })
                .await;
            if let Some(bytes) = self.lookup(redis, key, valid).await {
                self.coalesced(key);
                return Some(bytes);
            }
            if held != Some(true) {
                // Its call failed (or Redis went away): make our own.
                return None;
            }
        }
        None
    }

    /// The value in Redis, if there is one this process may use: at most the key's
    /// `max_bytes` (`GETRANGE` reads no more than one byte past it, so a planted 30 MB value
    /// costs nothing) and accepted by `valid`.
    async fn lookup(&self, redis: &Redis, key: &Key, valid: Valid<'_>) -> Option<Bytes> {
        let (name, end) = (key.name.clone(), key.max_bytes);
        let bytes: Vec<u8> = redis
            .run("get", |mut c| async move {
                c.getrange::<_, Vec<u8>>(name, 0, end as isize).await
            })
            .await?;
        // An absent key reads as empty; no cached answer is empty.
        if bytes.is_empty() {
            return None;
        }
        if bytes.len() > key.max_bytes || !valid(&bytes) {
            tracing::warn!(
                upstream = key.upstream,
                bytes = bytes.len(),
                "a cached answer in Redis is too large or does not decode: treated as a miss"
            );
            return None;
        }
        Some(Bytes::from(bytes))
    }

    /// Writes the answer (if any) to Redis and frees the key's lock, best effort.
    async fn store(&self, key: &Key, bytes: Option<&Bytes>) {
        let Some(redis) = self.redis.as_ref().filter(|_| key.shared) else {
            return;
        };
        let (name, lock, ttl) = (
            key.name.clone(),
            format!("{}:lock", key.name),
            key.ttl.as_millis().max(1) as u64,
        );
        let bytes = bytes.map(|b| b.to_vec());
        redis
            .run("set", |mut c| async move {
                let mut pipe = redis::pipe();
                if let Some(bytes) = bytes {
                    pipe.pset_ex(&name, bytes, ttl).ignore();
                }
                pipe.del(&lock).ignore().query_async::<()>(&mut c).await
            })
            .await;
    }

    fn count(&self, layer: Layer, key: &Key, hit: bool) {
        self.metrics
            .cache_requests
            .get_or_create(&CacheLabels {
                layer: layer.as_str(),
                upstream: key.upstream,
                result: if hit { "hit" } else { "miss" },
            })
            .inc();
    }
}
