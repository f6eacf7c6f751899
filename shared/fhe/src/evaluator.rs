//! The worker's evaluator: linear models on GLWE columns (no key), tree ensembles with the
//! data owner's evaluation key. The keys' lifecycle (download, checks, expansion, caches in
//! memory and on local disk) is the [`EvalKeyCache`]'s.

use crate::forest::PreparedEvalKey;
use crate::glwe::GlweEvaluator;
pub use crate::key_cache::ColdStart;
use crate::key_cache::EvalKeyCache;
use fhe_batch_core::ids::{EvalKeyId, KeyFingerprint};
use fhe_batch_core::model::{ServerBody, ServerModel};
use fhe_batch_core::ports::{ChunkEvaluator, ChunkInput, EvalError, KeyFetch, KeyLoadError};
use std::path::PathBuf;

/// Evaluates every model kind; holds the evaluation keys it has loaded.
pub struct FheEvaluator {
    keys: EvalKeyCache,
}

impl Default for FheEvaluator {
    fn default() -> Self {
        Self::new(Some(std::env::temp_dir().join("fhe-batch-keys")))
    }
}

impl FheEvaluator {
    /// An evaluator whose key files are cached in `disk` (none: memory only).
    pub fn new(disk: Option<PathBuf>) -> Self {
        Self {
            keys: EvalKeyCache::new(disk),
        }
    }

    pub fn last_cold_start(&self) -> Option<ColdStart> {
        self.keys.last_cold_start()
    }

    /// The evaluation keys this evaluator holds.
    pub fn key_cache(&self) -> &EvalKeyCache {
        &self.keys
    }
}

impl FheEvaluator {
    /// The loaded evaluation key a bootstrapped chunk names, and its expanded columns.
    fn bootstrapping_inputs(
        &self,
        model: &ServerModel,
        chunk: &ChunkInput<'_>,
    ) -> Result<(std::sync::Arc<PreparedEvalKey>, Vec<u64>), EvalError> {
        let id = chunk.eval_key.ok_or_else(|| {
            EvalError(format!("{} chunk names no evaluation key", model.family()))
        })?;
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| EvalError(format!("evaluation key {id} is not loaded")))?;
        let columns = GlweEvaluator::expand(
            model.params,
            chunk.shape(model.input_columns()),
            chunk.payload,
        )?;
        Ok((key, columns))
    }
}

impl ChunkEvaluator for FheEvaluator {
    fn evaluate(&self, model: &ServerModel, chunk: &ChunkInput<'_>) -> Result<Vec<u8>, EvalError> {
        let records = chunk.records as usize;
        match &model.body {
            ServerBody::Linear(linear) => {
                GlweEvaluator::evaluate_linear(model.params, linear, chunk)
            }
            ServerBody::TreeEnsemble(plan) => {
                let (key, columns) = self.bootstrapping_inputs(model, chunk)?;
                key.evaluate(model.params, plan, &columns, records)
            }
            ServerBody::NeuralNetwork(mlp) => {
                let (key, columns) = self.bootstrapping_inputs(model, chunk)?;
                key.evaluate_mlp(model.params, mlp, &columns, records)
            }
        }
    }

    fn has_eval_key(&self, id: &EvalKeyId) -> bool {
        self.keys.get_local(id).is_some()
    }

    fn eval_key_owner(&self, id: &EvalKeyId) -> Option<KeyFingerprint> {
        self.keys.get(id).map(|k| k.owner())
    }

    fn install_eval_key(&self, id: &EvalKeyId, bytes: Vec<u8>) -> Result<(), EvalError> {
        self.keys.install(id, &bytes).map(|_| ())
    }

    /// One download and one expansion per key, however many workers meet it at once.
    async fn prepare_eval_key<'a>(
        &'a self,
        id: &'a EvalKeyId,
        fetch: KeyFetch<'a>,
    ) -> Result<(), KeyLoadError> {
        self.keys.get_or_load(id, fetch).await.map(|_| ())
    }
}
