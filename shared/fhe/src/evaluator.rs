//! The worker's evaluator: linear models on GLWE columns (no key), tree ensembles with the
//! data owner's evaluation key, kept across warm invocations in memory and on local disk.

use crate::forest::{EvalKey, PreparedEvalKey};
use crate::glwe::GlweEvaluator;
use fhe_batch_core::ids::EvalKeyId;
use fhe_batch_core::model::ServerModel;
use fhe_batch_core::ports::{ChunkEvaluator, ChunkInput, EvalError};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Prepared keys kept in memory (about 190 MB each).
const MEMORY_KEYS: usize = 2;

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

/// Evaluates every model kind; holds the evaluation keys it has loaded.
pub struct FheEvaluator {
    keys: Mutex<VecDeque<(EvalKeyId, Arc<PreparedEvalKey>)>>,
    /// Where key files are cached between cold starts of one machine (`/tmp` on Lambda).
    disk: Option<PathBuf>,
    last_cold_start: Mutex<Option<ColdStart>>,
}

impl Default for FheEvaluator {
    fn default() -> Self {
        Self::new(Some(std::env::temp_dir().join("fhe-batch-keys")))
    }
}

impl FheEvaluator {
    pub fn new(disk: Option<PathBuf>) -> Self {
        Self {
            keys: Mutex::new(VecDeque::new()),
            disk,
            last_cold_start: Mutex::new(None),
        }
    }

    pub fn last_cold_start(&self) -> Option<ColdStart> {
        *self.last_cold_start.lock().expect("cold start")
    }

    fn cached(&self, id: &EvalKeyId) -> Option<Arc<PreparedEvalKey>> {
        let keys = self.keys.lock().expect("key cache");
        keys.iter().find(|(k, _)| k == id).map(|(_, v)| v.clone())
    }

    fn disk_path(&self, id: &EvalKeyId) -> Option<PathBuf> {
        self.disk.as_ref().map(|d| d.join(format!("{id}.key")))
    }

    /// Deserializes (hash, size, version and conformance checks), expands and caches a key.
    fn load(&self, id: &EvalKeyId, bytes: &[u8], from_disk: bool) -> Result<(), EvalError> {
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
        let mut keys = self.keys.lock().expect("key cache");
        if !keys.iter().any(|(k, _)| k == id) {
            if keys.len() == MEMORY_KEYS {
                keys.pop_front();
            }
            keys.push_back((*id, prepared));
        }
        Ok(())
    }
}

impl ChunkEvaluator for FheEvaluator {
    fn evaluate(&self, model: &ServerModel, chunk: &ChunkInput<'_>) -> Result<Vec<u8>, EvalError> {
        let Some(plan) = &model.forest else {
            return GlweEvaluator.evaluate(model, chunk);
        };
        let id = chunk
            .eval_key
            .ok_or_else(|| EvalError("tree ensemble chunk names no evaluation key".into()))?;
        let key = self
            .cached(id)
            .ok_or_else(|| EvalError(format!("evaluation key {id} is not loaded")))?;
        let columns = GlweEvaluator::expand(
            model.params,
            model.n_features as usize,
            chunk.slots as usize,
            chunk.payload,
        )?;
        key.evaluate(model.params, plan, &columns, chunk.records as usize)
    }

    fn has_eval_key(&self, id: &EvalKeyId) -> bool {
        if self.cached(id).is_some() {
            return true;
        }
        // A key file cached on this machine by an earlier (cold) invocation: re-checked like
        // a download (its name is its hash).
        let Some(path) = self.disk_path(id) else {
            return false;
        };
        match std::fs::read(&path) {
            Ok(bytes) => match self.load(id, &bytes, true) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(key = %id, error = %e, "discarding a damaged cached key");
                    let _ = std::fs::remove_file(&path);
                    false
                }
            },
            Err(_) => false,
        }
    }

    fn eval_key_owner(&self, id: &EvalKeyId) -> Option<fhe_batch_core::ids::KeyFingerprint> {
        self.cached(id).map(|k| k.owner())
    }

    fn install_eval_key(&self, id: &EvalKeyId, bytes: Vec<u8>) -> Result<(), EvalError> {
        self.load(id, &bytes, false)?;
        if let Some(path) = self.disk_path(id) {
            // Best effort: a full disk only costs the next cold start a download.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let written = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&tmp, &bytes))
                .and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(e) = written {
                tracing::warn!(key = %id, error = %e, "could not cache the key on disk");
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Ok(())
    }
}
