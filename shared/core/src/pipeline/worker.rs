//! The worker: evaluates one chunk message into a result object. It is idempotent (a result is
//! written create-once, a duplicate delivery is answered from it), records the chunks that can
//! never succeed, and leaves transient failures for redelivery until the dead-letter limit.
//!
//! An attempt's steps return [`AttemptError`], which `?` builds from storage errors; the
//! attempt then settles it as a retry or as the chunk's recorded failure.

use super::attempt::{AttemptError, Settled, check_message, result_header};
use super::faults::{FaultPoint, FaultProbe};
use super::notify::{Claimant, notify_attempt_if_ended};
use super::{current_attempt, write_chunk_failure};
use crate::format::ResultHeader;
use crate::ids::{EvalKeyId, JobId, ModelId};
use crate::job::{ChunkMessage, FailureKind};
use crate::layout;
use crate::model::{MAX_CLIENT_PART_BYTES, MAX_SERVER_PART_BYTES, ModelManifest, ServerModel};
use crate::params::ParamSet;
use crate::ports::{
    ChunkEvaluator, ChunkInput, KeyLoadError, MAX_EVAL_KEY_BYTES, Notifier, ObjectStore,
    PutOutcome, StoreError,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tracing::warn;

/// What the worker did with one chunk message. Every outcome means "acknowledge the message".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// The result was written now.
    Written { job: JobId, chunk: u32 },
    /// The result already existed (a duplicate delivery); nothing changed.
    AlreadyDone { job: JobId, chunk: u32 },
    /// The job has already failed; the chunk is skipped.
    Skipped { job: JobId, chunk: u32 },
    /// The message belongs to an earlier attempt of its job than the current one (the job was
    /// retried or re-uploaded since): dropped, nothing written.
    Stale {
        job: JobId,
        chunk: u32,
        attempt: u32,
        current: u32,
    },
    /// The chunk can never succeed; its failure is recorded and the job shows FAILED.
    Failed {
        job: Option<JobId>,
        chunk: u32,
        reason: String,
    },
}

impl ChunkOutcome {
    /// The job (when the message named one) and chunk of this outcome.
    pub fn chunk(&self) -> (Option<&JobId>, u32) {
        match self {
            ChunkOutcome::Written { job, chunk }
            | ChunkOutcome::AlreadyDone { job, chunk }
            | ChunkOutcome::Skipped { job, chunk }
            | ChunkOutcome::Stale { job, chunk, .. } => (Some(job), *chunk),
            ChunkOutcome::Failed { job, chunk, .. } => (job.as_ref(), *chunk),
        }
    }
}

/// A failed attempt that should be retried (the message stays in the queue).
#[derive(Debug, thiserror::Error)]
#[error("chunk attempt failed, will retry: {0}")]
pub struct RetryLater(pub String);

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The queue's dead-letter limit: on the attempt with this receive count a transient
    /// failure is recorded as the chunk's failure before the message goes to the dead-letter
    /// queue.
    pub max_receives: u32,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self { max_receives: 5 }
    }
}

/// The worker: stateless apart from a cache of loaded models (kept across warm invocations).
pub struct Worker<S, E> {
    store: S,
    evaluator: Arc<E>,
    config: WorkerConfig,
    models: Mutex<HashMap<ModelId, Arc<ServerModel>>>,
    probe: Option<Arc<dyn FaultProbe>>,
    notifier: Option<Arc<dyn Notifier>>,
}

impl<S: ObjectStore, E: ChunkEvaluator + 'static> Worker<S, E> {
    pub fn new(store: S, evaluator: E, config: WorkerConfig) -> Self {
        Self {
            store,
            evaluator: Arc::new(evaluator),
            config,
            models: Mutex::new(HashMap::new()),
            probe: None,
            notifier: None,
        }
    }

    /// Publishes each job's end (SUCCEEDED or FAILED) once, through `notifier`.
    pub fn with_notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Installs a fault probe (tests and the chaos benchmark only).
    pub fn with_probe(mut self, probe: Arc<dyn FaultProbe>) -> Self {
        self.probe = Some(probe);
        self
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Runs the fault probe, if any, at `point`.
    pub(super) fn probe(&self, point: FaultPoint, job: &JobId, chunk: u32) -> Result<(), String> {
        match &self.probe {
            Some(p) => p.check(point, job, chunk),
            None => Ok(()),
        }
    }

    /// The fault probe at `point` for `msg`'s chunk; an injected fault is transient.
    fn fault(&self, point: FaultPoint, msg: &ChunkMessage) -> Result<(), AttemptError> {
        self.probe(point, &msg.job, msg.chunk)
            .map_err(AttemptError::Transient)
    }

    /// Processes one delivery of a chunk message. `Ok` means acknowledge (done, duplicate,
    /// or permanently failed and recorded); `Err` means leave it for redelivery.
    pub async fn handle_message(
        &self,
        body: &str,
        receive_count: u32,
    ) -> Result<ChunkOutcome, RetryLater> {
        let msg = match ChunkMessage::parse(body) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "dropping malformed message");
                return Ok(ChunkOutcome::Failed {
                    job: None,
                    chunk: 0,
                    reason: e.to_string(),
                });
            }
        };
        let error = match self.try_attempt(&msg).await {
            Ok(outcome @ ChunkOutcome::Stale { .. }) => return Ok(outcome),
            Ok(outcome) => {
                self.notify(&msg).await?;
                return Ok(outcome);
            }
            Err(e) => e,
        };
        let (job, chunk) = (&msg.job, msg.chunk);
        let (kind, reason) = match error.settle(&msg) {
            Settled::Fail(kind, reason) => (kind, reason),
            Settled::Retry(reason) if receive_count >= self.config.max_receives => (
                FailureKind::RetriesExhausted,
                format!("chunk {chunk} failed {receive_count} times; last error: {reason}"),
            ),
            Settled::Retry(reason) => {
                warn!(%job, chunk, receive_count, %reason, "chunk attempt failed; will retry");
                return Err(RetryLater(reason));
            }
        };
        let recorded = self.record_failure(&msg, kind, reason).await;
        // The job has failed now: tell whoever waits for it (the message of a chunk whose
        // retries ran out still goes on to the dead-letter queue).
        if let Err(e) = self.notify(&msg).await
            && recorded.is_ok()
        {
            return Err(e);
        }
        recorded
    }

    /// Publishes the job's end notification when this chunk ended the job and nobody else
    /// claimed it; a failed publish leaves the message for redelivery.
    async fn notify(&self, msg: &ChunkMessage) -> Result<(), RetryLater> {
        let Some(notifier) = &self.notifier else {
            return Ok(());
        };
        notify_attempt_if_ended(
            &self.store,
            notifier.as_ref(),
            &msg.job,
            Some(msg.attempt),
            Claimant::Chunk(msg.chunk),
        )
        .await
        .map(|_| ())
        .map_err(|e| RetryLater(e.to_string()))
    }

    /// Writes the chunk's failure record. A chunk whose retries ran out is still not
    /// acknowledged, so that its message reaches the dead-letter queue.
    async fn record_failure(
        &self,
        msg: &ChunkMessage,
        kind: FailureKind,
        reason: String,
    ) -> Result<ChunkOutcome, RetryLater> {
        let (job, chunk) = (&msg.job, msg.chunk);
        warn!(%job, chunk, %reason, "chunk failed");
        let written =
            write_chunk_failure(&self.store, job, msg.attempt, chunk, kind, reason.clone()).await;
        match written {
            Ok(_) if kind == FailureKind::RetriesExhausted => Err(RetryLater(reason)),
            Ok(_) => Ok(ChunkOutcome::Failed {
                job: Some(job.clone()),
                chunk,
                reason,
            }),
            Err(e) => Err(RetryLater(format!(
                "could not record the failure ({reason}): {e}"
            ))),
        }
    }

    /// One attempt at a chunk: the checks, the read, the evaluation and the create-once write.
    async fn try_attempt(&self, msg: &ChunkMessage) -> Result<ChunkOutcome, AttemptError> {
        if let Some(outcome) = self.already_settled(msg).await? {
            return Ok(outcome);
        }
        self.mark_started(&msg.job).await?;
        let model = self.model(&msg.model_id, msg.params).await?;
        let sha = check_message(msg, &model)?;
        if model.family().bootstraps() {
            self.ready_eval_key(msg).await?;
        }
        self.fault(FaultPoint::BeforeRead, msg)?;
        let payload = self.read_chunk(msg, &sha).await?;
        let started = std::time::Instant::now();
        let body = self.evaluate(&model, msg, payload).await?;
        self.fault(FaultPoint::AfterEvaluate, msg)?;
        let header = result_header(msg, &model);
        if body.len() != header.body_len() {
            return Err(AttemptError::Permanent {
                kind: FailureKind::Internal,
                reason: format!(
                    "evaluator returned {} bytes for chunk {}",
                    body.len(),
                    msg.chunk
                ),
            });
        }
        let eval_us = started.elapsed().as_micros() as u64;
        self.write_result(msg, &header, &body, eval_us).await
    }

    /// The outcome of a chunk that needs no work: its result exists, its message belongs to
    /// an earlier attempt of the job, or its job has failed.
    async fn already_settled(
        &self,
        msg: &ChunkMessage,
    ) -> Result<Option<ChunkOutcome>, StoreError> {
        let (job, chunk) = (msg.job.clone(), msg.chunk);
        if self
            .store
            .size(&layout::chunk_result(&job, chunk))
            .await?
            .is_some()
        {
            return Ok(Some(ChunkOutcome::AlreadyDone { job, chunk }));
        }
        let current = current_attempt(&self.store, &job).await?;
        if msg.attempt != current {
            tracing::info!(
                %job,
                chunk,
                attempt = msg.attempt,
                current,
                "dropping a chunk message of another attempt than the job's current one"
            );
            return Ok(Some(ChunkOutcome::Stale {
                job,
                chunk,
                attempt: msg.attempt,
                current,
            }));
        }
        if self
            .store
            .size(&layout::attempt_failure(&job, current))
            .await?
            .is_some()
        {
            return Ok(Some(ChunkOutcome::Skipped { job, chunk }));
        }
        Ok(None)
    }

    /// Marks the job as started (its status shows RUNNING).
    async fn mark_started(&self, job: &JobId) -> Result<(), StoreError> {
        // A HEAD first: on S3 a PUT costs ten times a GET, and only the first chunk creates it.
        let started = layout::job_started(job);
        if self.store.size(&started).await?.is_none() {
            self.store.put_if_absent(&started, Vec::new()).await?;
        }
        Ok(())
    }

    /// Reads the chunk's ciphertexts and checks them against the message's hash.
    async fn read_chunk(
        &self,
        msg: &ChunkMessage,
        sha: &[u8; 32],
    ) -> Result<Vec<u8>, AttemptError> {
        let payload = self
            .store
            .get_range(&msg.batch_key, msg.offset, msg.length)
            .await?;
        crate::format::verify_chunk(&payload, msg.length, sha)
            .map_err(|e| AttemptError::invalid_chunk(format!("chunk {}: {e}", msg.chunk)))?;
        Ok(payload)
    }

    /// Runs the evaluator on the chunk on the blocking thread pool (it is CPU work for up to
    /// minutes: the async tasks of this process, such as the queue loop's visibility
    /// heartbeat, keep running), containing a panic.
    async fn evaluate(
        &self,
        model: &Arc<ServerModel>,
        msg: &ChunkMessage,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, AttemptError> {
        let chunk = msg.chunk;
        let (records, records_per_chunk) = (msg.records, msg.records_per_chunk());
        let (eval_key, encryption) = (msg.eval_key, msg.encryption);
        let (evaluator, model) = (self.evaluator.clone(), model.clone());
        let evaluated = tokio::task::spawn_blocking(move || {
            let input = ChunkInput {
                payload: &payload,
                records,
                records_per_chunk,
                eval_key: eval_key.as_ref(),
                encryption,
            };
            evaluator.evaluate(&model, &input)
        })
        .await;
        match evaluated {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(e)) => Err(AttemptError::invalid_chunk(format!("chunk {chunk}: {e}"))),
            // A panic may come from a passing condition of this machine as well as from a
            // bug that this chunk triggers: retry it, and let the dead-letter limit decide.
            Err(_) => Err(AttemptError::Transient(format!(
                "internal error (panic) while evaluating chunk {chunk}"
            ))),
        }
    }

    /// Writes the result create-once; a result written meanwhile by another delivery wins.
    async fn write_result(
        &self,
        msg: &ChunkMessage,
        header: &ResultHeader,
        body: &[u8],
        eval_us: u64,
    ) -> Result<ChunkOutcome, AttemptError> {
        let (job, chunk) = (msg.job.clone(), msg.chunk);
        self.fault(FaultPoint::BeforeResultWrite, msg)?;
        let outcome = self
            .store
            .put_if_absent(&layout::chunk_result(&job, chunk), header.encode(body))
            .await?;
        self.fault(FaultPoint::AfterResultWrite, msg)?;
        tracing::debug!(%job, chunk, eval_us, ?outcome, "chunk result");
        Ok(match outcome {
            PutOutcome::Created => ChunkOutcome::Written { job, chunk },
            PutOutcome::AlreadyExists => ChunkOutcome::AlreadyDone { job, chunk },
        })
    }

    /// Makes the evaluation key the chunk names ready (from the evaluator's caches, else
    /// downloaded), and checks that it belongs to the secret key the batch was encrypted under.
    async fn ready_eval_key(&self, msg: &ChunkMessage) -> Result<(), AttemptError> {
        let Some(id) = msg.eval_key.as_ref() else {
            return Err(AttemptError::model(format!(
                "model {} needs an evaluation key and the batch names none",
                msg.model_id
            )));
        };
        self.eval_key(id, &layout::eval_key_for(&msg.job, id))
            .await?;
        if let Some(owner) = self.evaluator.eval_key_owner(id)
            && owner != msg.key_fingerprint
        {
            return Err(AttemptError::model(format!(
                "evaluation key {id} belongs to secret key {owner}, but the batch was encrypted under {}; publish this key's evaluation key (`fhe-batch publish-key`) and name it",
                msg.key_fingerprint
            )));
        }
        Ok(())
    }

    /// Makes evaluation key `id` ready: from the evaluator's caches, else downloaded once.
    /// Keys are named by the SHA-256 of their bytes (checked when loaded), so one cache serves
    /// every tenant: the same id is the same key wherever it was uploaded.
    async fn eval_key(&self, id: &EvalKeyId, key: &str) -> Result<(), AttemptError> {
        let fetch = Box::pin(self.store.get(key, MAX_EVAL_KEY_BYTES));
        match self.evaluator.prepare_eval_key(id, fetch).await {
            Ok(()) => Ok(()),
            Err(KeyLoadError::Fetch(StoreError::NotFound { .. })) => Err(AttemptError::model(
                format!("evaluation key {id} is not uploaded ({key})"),
            )),
            Err(KeyLoadError::Fetch(e)) => Err(e.into()),
            Err(KeyLoadError::Unusable(e)) => {
                Err(AttemptError::model(format!("evaluation key {id}: {e}")))
            }
            Err(KeyLoadError::Panicked) => Err(AttemptError::model(format!(
                "evaluation key {id} could not be loaded"
            ))),
        }
    }

    /// Loads a model's server part once per worker and keeps it.
    async fn model(
        &self,
        id: &ModelId,
        params: ParamSet,
    ) -> Result<Arc<ServerModel>, AttemptError> {
        if let Some(m) = self.models.lock().expect("model cache").get(id) {
            return Ok(m.clone());
        }
        let manifest = self
            .get_model_part(&layout::model_manifest(id), MAX_CLIENT_PART_BYTES)
            .await?
            .ok_or_else(|| AttemptError::model(format!("model {id} is not published")))?;
        let manifest = ModelManifest::from_bytes(&manifest)
            .map_err(|e| AttemptError::model(format!("model {id}: {e}")))?;
        let server = self
            .get_model_part(&layout::model_server(id), MAX_SERVER_PART_BYTES)
            .await?
            .ok_or_else(|| AttemptError::model(format!("model {id} has no server part")))?;
        let model = match manifest.open_server(&server) {
            Ok(m) if m.params == params && manifest.model_id == *id => Arc::new(m),
            Ok(_) => {
                return Err(AttemptError::model(format!(
                    "model {id} does not match the batch"
                )));
            }
            Err(e) => return Err(AttemptError::model(format!("model {id}: {e}"))),
        };
        self.models
            .lock()
            .expect("model cache")
            .insert(*id, model.clone());
        Ok(model)
    }

    /// One part of a published model, or `None` when it is missing.
    async fn get_model_part(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self.store.get(key, max_bytes).await {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
