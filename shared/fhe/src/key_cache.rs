//! The evaluation-key lifecycle of a worker, apart from evaluation: an uploaded key is
//! downloaded, checked against its id (the SHA-256 of its bytes), deserialized with size,
//! version and parameter checks, and expanded. [`EvalKeyCache`] keeps the expanded keys in
//! memory (the last [`MEMORY_KEYS`]) and the key files on local disk (`/tmp` on Lambda), where
//! a file is checked again when read and deleted when damaged.
//!
//! Concurrent callers that meet the same key that is not ready share one download and one
//! expansion ([`SingleFlight`]); a failed load is not remembered, so the next caller tries
//! again.

use crate::forest::{EvalKey, PreparedEvalKey};
use fhe_batch_core::ids::EvalKeyId;
use fhe_batch_core::ports::{EvalError, KeyLoadError, StoreError, fetch_and_install};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::OnceCell;

/// Prepared keys kept in memory (about 190 MB each).
pub const MEMORY_KEYS: usize = 2;

/// Time spent making a key ready, reported in the worker's logs and by `bench`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ColdStart {
    pub bytes: usize,
    pub from_disk_cache: bool,
    /// Hash check, safe deserialization and conformance check.
    pub deserialize_s: f64,
    /// Decompression of the bootstrapping and packing keys.
    pub prepare_s: f64,
}

/// Evaluation keys ready for evaluation: in memory, on local disk, or loaded on demand.
pub struct EvalKeyCache {
    memory: Mutex<VecDeque<(EvalKeyId, Arc<PreparedEvalKey>)>>,
    /// Where key files are cached between cold starts of one machine (`/tmp` on Lambda).
    disk: Option<PathBuf>,
    loads: SingleFlight<EvalKeyId, Arc<PreparedEvalKey>>,
    last_cold_start: Mutex<Option<ColdStart>>,
}

impl EvalKeyCache {
    pub fn new(disk: Option<PathBuf>) -> Self {
        Self {
            memory: Mutex::new(VecDeque::new()),
            disk,
            loads: SingleFlight::default(),
            last_cold_start: Mutex::new(None),
        }
    }

    /// The figures of the last key made ready from bytes.
    pub fn last_cold_start(&self) -> Option<ColdStart> {
        *self.last_cold_start.lock().expect("cold start")
    }

    /// A key in memory.
    pub fn get(&self, id: &EvalKeyId) -> Option<Arc<PreparedEvalKey>> {
        let memory = self.memory.lock().expect("key cache");
        memory.iter().find(|(k, _)| k == id).map(|(_, v)| v.clone())
    }

    /// A key in memory, else from the disk cache (checked again like a download).
    pub fn get_local(&self, id: &EvalKeyId) -> Option<Arc<PreparedEvalKey>> {
        self.get(id).or_else(|| self.read_disk(id))
    }

    /// Makes a key ready from its uploaded bytes, and caches the file on disk.
    pub fn install(&self, id: &EvalKeyId, bytes: &[u8]) -> Result<Arc<PreparedEvalKey>, EvalError> {
        let key = self.load(id, bytes, false)?;
        self.write_disk(id, bytes);
        Ok(key)
    }

    /// A key from memory or disk, else downloaded (`fetch` awaited) and installed. Concurrent
    /// callers for one key share a single load.
    pub async fn get_or_load(
        &self,
        id: &EvalKeyId,
        fetch: impl Future<Output = Result<Vec<u8>, StoreError>>,
    ) -> Result<Arc<PreparedEvalKey>, KeyLoadError> {
        if let Some(key) = self.get(id) {
            return Ok(key);
        }
        self.loads
            .run(*id, || async {
                // Another caller may have finished a load since the check above.
                if let Some(key) = self.get_local(id) {
                    return Ok(key);
                }
                fetch_and_install(id, fetch, |bytes| self.install(id, &bytes)).await
            })
            .await
    }

    fn disk_path(&self, id: &EvalKeyId) -> Option<PathBuf> {
        self.disk.as_ref().map(|d| d.join(format!("{id}.key")))
    }

    /// A key file cached on this machine by an earlier (cold) invocation: re-checked like a
    /// download (its name is its hash), and deleted when damaged.
    fn read_disk(&self, id: &EvalKeyId) -> Option<Arc<PreparedEvalKey>> {
        let path = self.disk_path(id)?;
        let bytes = std::fs::read(&path).ok()?;
        match self.load(id, &bytes, true) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(key = %id, error = %e, "discarding a damaged cached key");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Best effort: a full disk only costs the next cold start a download.
    fn write_disk(&self, id: &EvalKeyId, bytes: &[u8]) {
        let Some(path) = self.disk_path(id) else {
            return;
        };
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(key = %id, error = %e, "could not cache the key on disk");
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// Deserializes (hash, size, version and conformance checks), expands and keeps a key.
    fn load(
        &self,
        id: &EvalKeyId,
        bytes: &[u8],
        from_disk: bool,
    ) -> Result<Arc<PreparedEvalKey>, EvalError> {
        let params = fhe_batch_core::params::ParamSet::Glwe2048TUniform17;
        let t = Instant::now();
        let key = EvalKey::from_bytes(id, bytes, params).map_err(|e| EvalError(e.to_string()))?;
        let deserialize_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let prepared = Arc::new(key.prepare());
        let prepare_s = t.elapsed().as_secs_f64();
        *self.last_cold_start.lock().expect("cold start") = Some(ColdStart {
            bytes: bytes.len(),
            from_disk_cache: from_disk,
            deserialize_s,
            prepare_s,
        });
        Ok(self.remember(id, prepared))
    }

    /// Keeps a key in memory, evicting the oldest past [`MEMORY_KEYS`]; a key already there
    /// stays (and is returned).
    fn remember(&self, id: &EvalKeyId, key: Arc<PreparedEvalKey>) -> Arc<PreparedEvalKey> {
        let mut memory = self.memory.lock().expect("key cache");
        if let Some((_, kept)) = memory.iter().find(|(k, _)| k == id) {
            return kept.clone();
        }
        if memory.len() == MEMORY_KEYS {
            memory.pop_front();
        }
        memory.push_back((*id, key.clone()));
        key
    }
}

/// At most one load per key at a time: callers that arrive while a load runs wait for its
/// value instead of loading again. A failed load is not kept: a waiting caller, or the next
/// one, runs its own load. The value is expected to be cached by the loader; only loads in
/// flight are held here.
pub struct SingleFlight<K, V> {
    in_flight: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            in_flight: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// The value of `load` for `key`, run by this caller or by the one already running it.
    pub async fn run<E, F, Fut>(&self, key: K, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = {
            let mut in_flight = self.in_flight.lock().expect("single flight");
            in_flight.entry(key.clone()).or_default().clone()
        };
        let result = cell.get_or_try_init(load).await.cloned();
        let mut in_flight = self.in_flight.lock().expect("single flight");
        if in_flight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            in_flight.remove(&key);
        }
        result
    }

    /// Loads in flight (for tests).
    pub fn in_flight(&self) -> usize {
        self.in_flight.lock().expect("single flight").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// `n` concurrent callers of one key (tasks on the test's runtime); each load counts
    /// itself, takes a while, and returns `result`.
    async fn concurrent(
        flight: &Arc<SingleFlight<u32, u64>>,
        loads: &Arc<AtomicUsize>,
        n: usize,
        result: Result<u64, ()>,
    ) -> Vec<Result<u64, ()>> {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (flight, loads) = (flight.clone(), loads.clone());
            tasks.spawn(async move {
                flight
                    .run(7, || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        result
                    })
                    .await
            });
        }
        tasks.join_all().await
    }

    #[tokio::test]
    async fn concurrent_callers_of_one_key_share_one_load() {
        let flight = Arc::new(SingleFlight::default());
        let loads = Arc::new(AtomicUsize::new(0));
        let results = concurrent(&flight, &loads, 8, Ok(42)).await;
        assert_eq!(results, vec![Ok(42); 8]);
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(flight.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_failed_load_is_not_kept() {
        let flight = Arc::new(SingleFlight::default());
        let loads = Arc::new(AtomicUsize::new(0));
        assert_eq!(concurrent(&flight, &loads, 1, Err(())).await, vec![Err(())]);
        assert_eq!(flight.in_flight(), 0);
        // The next caller loads again, and succeeds.
        assert_eq!(concurrent(&flight, &loads, 1, Ok(5)).await, vec![Ok(5)]);
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn callers_waiting_on_a_failed_load_try_again_themselves() {
        let flight = Arc::new(SingleFlight::default());
        let loads = Arc::new(AtomicUsize::new(0));
        let results = concurrent(&flight, &loads, 3, Err(())).await;
        assert_eq!(results, vec![Err(()); 3]);
        // Each waiter ran its own load once the one before failed: none was handed a
        // remembered failure.
        assert_eq!(loads.load(Ordering::SeqCst), 3);
        assert_eq!(flight.in_flight(), 0);
    }

    fn some_id() -> EvalKeyId {
        EvalKeyId::from_bytes([7; 16])
    }

    #[tokio::test]
    async fn bytes_that_do_not_hash_to_the_id_are_refused_and_not_remembered() {
        let cache = EvalKeyCache::new(None);
        let fetches = AtomicUsize::new(0);
        for round in 1..=2 {
            let fetch = async {
                fetches.fetch_add(1, Ordering::SeqCst);
                Ok(b"not a key".to_vec())
            };
            let Err(e) = cache.get_or_load(&some_id(), fetch).await else {
                panic!("a key that is not one was loaded");
            };
            assert!(matches!(e, KeyLoadError::Unusable(_)), "{e:?}");
            assert_eq!(fetches.load(Ordering::SeqCst), round);
        }
        assert!(cache.get(&some_id()).is_none());
    }

    #[tokio::test]
    async fn a_key_that_is_not_uploaded_is_a_fetch_error() {
        let cache = EvalKeyCache::new(None);
        let missing = async {
            Err(StoreError::NotFound {
                key: "keys/x/eval.key".into(),
            })
        };
        let Err(e) = cache.get_or_load(&some_id(), missing).await else {
            panic!("a missing key was loaded");
        };
        assert!(matches!(
            e,
            KeyLoadError::Fetch(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn a_damaged_cached_key_file_is_deleted_not_trusted() {
        let dir = std::env::temp_dir().join(format!("fhe-batch-key-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{}.key", some_id()));
        std::fs::write(&file, b"damaged").unwrap();
        let cache = EvalKeyCache::new(Some(dir.clone()));
        assert!(cache.get_local(&some_id()).is_none());
        assert!(!file.exists());
        assert!(cache.last_cold_start().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
