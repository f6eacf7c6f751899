//! The pipeline's logic over the ports: ingest, worker and status. The Lambda functions and the
//! local runner are thin wiring around these.

use crate::format::{BatchHeader, BatchLimits, FIXED_HEADER_LEN, FormatError, ResultHeader};
use crate::ids::{EvalKeyId, JobId, ModelId};
use crate::job::{
    ChunkMessage, FailureKind, FailureRecord, JOB_FORMAT_VERSION, JobManifest, JobState, JobStatus,
    MAX_RECORD_BYTES,
};
use crate::layout;
use crate::model::{MAX_CLIENT_PART_BYTES, MAX_SERVER_PART_BYTES, ModelManifest, ServerModel};
use crate::params::ParamSet;
use crate::ports::{Delivery, JobQueue, ObjectStore, PutOutcome, QueueError, StoreError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

// The evaluator port lives in `ports`; these paths keep naming it here.
pub use crate::ports::{ChunkEvaluator, ChunkInput, EvalError, MAX_EVAL_KEY_BYTES};

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Something broke that a retry may fix (the event or message should be redelivered).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

// ---------------------------------------------------------------------------------------------
// Ingest

/// What ingest did with an uploaded object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// The batch is valid: manifest written, one message per chunk queued.
    Queued { job: JobId, chunks: u32 },
    /// A repeated event for a job already ingested: missing chunks were queued again.
    Requeued { job: JobId, chunks: u32 },
    /// The batch is invalid: the job is FAILED with this reason.
    Rejected { job: JobId, reason: String },
    /// Not ours to process (not a batch key, object gone, job already decided).
    Ignored { key: String, reason: String },
}

impl IngestOutcome {
    /// A JSON summary for logs and function responses.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            IngestOutcome::Queued { job, chunks } => {
                serde_json::json!({"job": job, "outcome": "queued", "chunks": chunks})
            }
            IngestOutcome::Requeued { job, chunks } => {
                serde_json::json!({"job": job, "outcome": "requeued", "chunks": chunks})
            }
            IngestOutcome::Rejected { job, reason } => {
                serde_json::json!({"job": job, "outcome": "rejected", "reason": reason})
            }
            IngestOutcome::Ignored { key, reason } => {
                serde_json::json!({"key": key, "outcome": "ignored", "reason": reason})
            }
        }
    }
}

/// Validates an uploaded batch and queues its chunks.
///
/// Reads only the header (two ranged GETs), never the ciphertext body. An invalid batch ends
/// as a FAILED job and `Ok(Rejected)`, so the trigger does not retry it; only storage or queue
/// trouble returns `Err`.
pub async fn ingest_object<S: ObjectStore, Q: JobQueue>(
    store: &S,
    queue: &Q,
    key: &str,
    limits: &BatchLimits,
) -> Result<IngestOutcome, PipelineError> {
    let job = match layout::job_of_inbox_key(key) {
        Ok(job) => job,
        Err(e) => {
            warn!(key, error = %e, "ignoring object");
            return Ok(IngestOutcome::Ignored {
                key: key.to_string(),
                reason: e.to_string(),
            });
        }
    };
    if store.size(&layout::job_failure(&job)).await?.is_some() {
        return Ok(IngestOutcome::Ignored {
            key: key.to_string(),
            reason: format!("job {job} has already failed"),
        });
    }
    let Some(size) = store.size(key).await? else {
        return Ok(IngestOutcome::Ignored {
            key: key.to_string(),
            reason: "the object no longer exists".into(),
        });
    };
    let header = match read_header(store, key, size, limits).await? {
        Ok(h) => h,
        Err(reason) => return reject(store, &job, FailureKind::InvalidBatch, reason).await,
    };
    if let Err(reason) = check_model(store, &header).await? {
        return reject(store, &job, FailureKind::Model, reason).await;
    }
    let header_bytes = header.encode();
    let manifest = JobManifest {
        format_version: JOB_FORMAT_VERSION,
        job: job.clone(),
        batch_key: key.to_string(),
        batch_bytes: size,
        header_sha256: hex::encode(Sha256::digest(&header_bytes)),
        model_id: header.model_id,
        key_fingerprint: header.key_fingerprint,
        params: header.params,
        record_count: header.record_count,
        feature_count: header.feature_count,
        chunk_count: header.chunks.len() as u32,
        created_unix_ms: now_unix_ms(),
    };
    let manifest_key = layout::job_manifest(&job);
    let created = store
        .put_if_absent(
            &manifest_key,
            serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
        )
        .await?;
    let mut pending: Vec<u32> = (0..header.chunks.len() as u32).collect();
    if created == PutOutcome::AlreadyExists {
        let existing = read_manifest(store, &job).await?;
        if existing.as_ref().map(|m| &m.header_sha256) != Some(&manifest.header_sha256) {
            warn!(%job, "a different batch was uploaded under an existing job id; ignoring it");
            return Ok(IngestOutcome::Ignored {
                key: key.to_string(),
                reason: format!(
                    "job {job} already exists for another upload; job ids must be unique"
                ),
            });
        }
        // Same upload seen again (S3 may repeat events, or a previous ingest died after the
        // manifest): queue again what has no result yet. Workers are idempotent.
        let done = chunk_set(store, &layout::results_prefix(&job)).await?;
        pending.retain(|c| !done.contains_key(c));
    }
    let bodies: Vec<String> = pending
        .iter()
        .map(|&i| {
            ChunkMessage::for_chunk(&job, key, &header, i, &header.chunks[i as usize]).to_body()
        })
        .collect();
    let n = bodies.len() as u32;
    queue.send_batch(bodies).await?;
    info!(%job, chunks = n, records = header.record_count, "batch queued");
    Ok(if created == PutOutcome::Created {
        IngestOutcome::Queued { job, chunks: n }
    } else {
        IngestOutcome::Requeued { job, chunks: n }
    })
}

async fn read_header<S: ObjectStore>(
    store: &S,
    key: &str,
    size: u64,
    limits: &BatchLimits,
) -> Result<Result<BatchHeader, String>, StoreError> {
    let describe = |e: FormatError| format!("invalid batch: {e}");
    if size > limits.max_batch_bytes {
        return Ok(Err(describe(FormatError::TooLarge {
            what: "batch size in bytes",
            value: size,
            limit: limits.max_batch_bytes,
        })));
    }
    let prefix = store
        .get_range(key, 0, size.min(FIXED_HEADER_LEN as u64))
        .await?;
    let hlen = match BatchHeader::header_len_from_prefix(&prefix, limits) {
        Ok(h) => h,
        Err(e) => return Ok(Err(describe(e))),
    };
    if hlen > size {
        return Ok(Err(describe(FormatError::Truncated {
            what: "batch header",
            needed: hlen,
            got: size,
        })));
    }
    let bytes = store.get_range(key, 0, hlen).await?;
    let header = match BatchHeader::parse(&bytes, limits) {
        Ok(h) => h,
        Err(e) => return Ok(Err(describe(e))),
    };
    if let Err(e) = header.check_object_size(size) {
        return Ok(Err(describe(e)));
    }
    Ok(Ok(header))
}

async fn check_model<S: ObjectStore>(
    store: &S,
    header: &BatchHeader,
) -> Result<Result<(), String>, StoreError> {
    let id = header.model_id;
    let bytes = match store
        .get(&layout::model_manifest(&id), MAX_CLIENT_PART_BYTES)
        .await
    {
        Ok(b) => b,
        Err(StoreError::NotFound { .. }) => {
            return Ok(Err(format!(
                "the batch was encrypted for model {id}, which is not published in this bucket (models/{id}/)"
            )));
        }
        Err(e) => return Err(e),
    };
    let manifest = match ModelManifest::from_bytes(&bytes) {
        Ok(m) => m,
        Err(e) => return Ok(Err(format!("model {id} cannot be used: {e}"))),
    };
    if manifest.model_id != id {
        return Ok(Err(format!(
            "model {id}'s manifest names another model ({})",
            manifest.model_id
        )));
    }
    if manifest.params != header.params {
        return Ok(Err(format!(
            "the batch uses parameter set {} but model {id} uses {}",
            header.params, manifest.params
        )));
    }
    if manifest.n_features != header.feature_count {
        return Ok(Err(format!(
            "the batch has {} features per record but model {id} takes {}",
            header.feature_count, manifest.n_features
        )));
    }
    if manifest.kind.bootstraps() {
        let Some(key) = header.eval_key else {
            return Ok(Err(format!(
                "model {id} bootstraps and needs an evaluation key, but the batch names none (upload one with `fhe-batch publish-key` and encrypt with it)"
            )));
        };
        match store.size(&layout::eval_key(&key)).await? {
            None => {
                return Ok(Err(format!(
                    "the batch names evaluation key {key}, which is not uploaded (keys/{key}/eval.key)"
                )));
            }
            Some(n) if n > MAX_EVAL_KEY_BYTES => {
                return Ok(Err(format!(
                    "evaluation key {key} is {n} bytes; the limit is {MAX_EVAL_KEY_BYTES}"
                )));
            }
            Some(_) => {}
        }
        let seconds = header.slots as f64 * manifest.pbs_per_record as f64
            / crate::tree::WORKER_PBS_PER_SECOND;
        if seconds > crate::tree::MAX_CHUNK_SECONDS {
            return Ok(Err(format!(
                "chunks of {} records cost about {seconds:.0} s each at {} bootstraps per record, past the {:.0} s a worker may spend; encrypt with smaller chunks",
                header.slots,
                manifest.pbs_per_record,
                crate::tree::MAX_CHUNK_SECONDS
            )));
        }
    } else if header.eval_key.is_some() {
        return Ok(Err(format!(
            "the batch names an evaluation key but model {id} does not bootstrap"
        )));
    }
    Ok(Ok(()))
}

async fn reject<S: ObjectStore>(
    store: &S,
    job: &JobId,
    kind: FailureKind,
    reason: String,
) -> Result<IngestOutcome, PipelineError> {
    warn!(%job, %reason, "batch rejected");
    let record = FailureRecord {
        chunk: None,
        kind,
        reason: reason.clone(),
        at_unix_ms: now_unix_ms(),
    };
    store
        .put_if_absent(
            &layout::job_failure(job),
            serde_json::to_vec_pretty(&record).expect("record serializes"),
        )
        .await?;
    Ok(IngestOutcome::Rejected {
        job: job.clone(),
        reason,
    })
}

async fn read_manifest<S: ObjectStore>(
    store: &S,
    job: &JobId,
) -> Result<Option<JobManifest>, StoreError> {
    match store
        .get(&layout::job_manifest(job), MAX_RECORD_BYTES)
        .await
    {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Chunk indices present under a prefix, with their keys.
async fn chunk_set<S: ObjectStore>(
    store: &S,
    prefix: &str,
) -> Result<HashMap<u32, String>, StoreError> {
    Ok(store
        .list(prefix)
        .await?
        .into_iter()
        .filter_map(|k| layout::chunk_of_name(&k).map(|c| (c, k)))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Worker

/// What the worker did with one chunk message. Every outcome means "acknowledge the message".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// The result was written now.
    Written { job: JobId, chunk: u32 },
    /// The result already existed (a duplicate delivery); nothing changed.
    AlreadyDone { job: JobId, chunk: u32 },
    /// The job has already failed; the chunk is skipped.
    Skipped { job: JobId, chunk: u32 },
    /// The chunk can never succeed; its failure is recorded and the job shows FAILED.
    Failed {
        job: Option<JobId>,
        chunk: u32,
        reason: String,
    },
}

/// A failed attempt that should be retried (the message stays in the queue).
#[derive(Debug, thiserror::Error)]
#[error("chunk attempt failed, will retry: {0}")]
pub struct RetryLater(pub String);

/// The places in a chunk's handling where a crash or an error can strike. Tests and the chaos
/// benchmark inject faults there through a [`FaultProbe`]; production workers have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// After the checks, before the chunk's ciphertexts are read.
    BeforeRead,
    /// After evaluation, before the result is encoded.
    AfterEvaluate,
    /// Just before the create-once write of the result.
    BeforeResultWrite,
    /// Just after the result was written, before the outcome is reported.
    AfterResultWrite,
    /// After a successful outcome, before the message is acknowledged (queue loop only).
    BeforeAck,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 5] = [
        FaultPoint::BeforeRead,
        FaultPoint::AfterEvaluate,
        FaultPoint::BeforeResultWrite,
        FaultPoint::AfterResultWrite,
        FaultPoint::BeforeAck,
    ];
}

/// Called at each [`FaultPoint`]; an `Err` makes the attempt fail as a transient error (the
/// message is redelivered), and a panic unwinds like a crash of the worker.
pub trait FaultProbe: Send + Sync {
    fn check(&self, point: FaultPoint, job: &JobId, chunk: u32) -> Result<(), String>;
}

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
    evaluator: E,
    config: WorkerConfig,
    models: Mutex<HashMap<ModelId, Arc<ServerModel>>>,
    probe: Option<Arc<dyn FaultProbe>>,
}

enum Attempt {
    Done(ChunkOutcome),
    Permanent(FailureKind, String),
    Transient(String),
}

/// Why an attempt stopped before it had an outcome.
enum Refusal {
    Store(StoreError),
    Fault(String),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e)
    }
}

impl<S: ObjectStore, E: ChunkEvaluator> Worker<S, E> {
    pub fn new(store: S, evaluator: E, config: WorkerConfig) -> Self {
        Self {
            store,
            evaluator,
            config,
            models: Mutex::new(HashMap::new()),
            probe: None,
        }
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
    fn probe(&self, point: FaultPoint, job: &JobId, chunk: u32) -> Result<(), String> {
        match &self.probe {
            Some(p) => p.check(point, job, chunk),
            None => Ok(()),
        }
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
        let job = msg.job.clone();
        let chunk = msg.chunk;
        let attempt = self.attempt(&msg).await;
        let (kind, reason) = match attempt {
            Attempt::Done(outcome) => return Ok(outcome),
            Attempt::Permanent(kind, reason) => (kind, reason),
            Attempt::Transient(reason) if receive_count >= self.config.max_receives => (
                FailureKind::RetriesExhausted,
                format!("chunk {chunk} failed {receive_count} times; last error: {reason}"),
            ),
            Attempt::Transient(reason) => {
                warn!(%job, chunk, receive_count, %reason, "chunk attempt failed; will retry");
                return Err(RetryLater(reason));
            }
        };
        warn!(%job, chunk, %reason, "chunk failed");
        let record = FailureRecord {
            chunk: Some(chunk),
            kind,
            reason: reason.clone(),
            at_unix_ms: now_unix_ms(),
        };
        let written = self
            .store
            .put_if_absent(
                &layout::chunk_error(&job, chunk),
                serde_json::to_vec_pretty(&record).expect("record serializes"),
            )
            .await;
        match written {
            Ok(_) if kind == FailureKind::RetriesExhausted => Err(RetryLater(reason)),
            Ok(_) => Ok(ChunkOutcome::Failed {
                job: Some(job),
                chunk,
                reason,
            }),
            Err(e) => Err(RetryLater(format!(
                "could not record the failure ({reason}): {e}"
            ))),
        }
    }

    async fn attempt(&self, msg: &ChunkMessage) -> Attempt {
        match self.try_attempt(msg).await {
            Ok(a) => a,
            Err(Refusal::Fault(reason)) => Attempt::Transient(reason),
            Err(Refusal::Store(e)) if e.is_retryable() => Attempt::Transient(e.to_string()),
            Err(Refusal::Store(StoreError::NotFound { key })) if key == msg.batch_key => {
                Attempt::Permanent(
                    FailureKind::InvalidChunk,
                    format!(
                        "the batch {key} was deleted before chunk {} was read",
                        msg.chunk
                    ),
                )
            }
            Err(Refusal::Store(e)) => Attempt::Permanent(FailureKind::InvalidChunk, e.to_string()),
        }
    }

    async fn try_attempt(&self, msg: &ChunkMessage) -> Result<Attempt, Refusal> {
        let fault = |point| {
            self.probe(point, &msg.job, msg.chunk)
                .map_err(Refusal::Fault)
        };
        let (job, chunk) = (&msg.job, msg.chunk);
        let result_key = layout::chunk_result(job, chunk);
        if self.store.size(&result_key).await?.is_some() {
            return Ok(Attempt::Done(ChunkOutcome::AlreadyDone {
                job: job.clone(),
                chunk,
            }));
        }
        if self.store.size(&layout::job_failure(job)).await?.is_some() {
            return Ok(Attempt::Done(ChunkOutcome::Skipped {
                job: job.clone(),
                chunk,
            }));
        }
        // A HEAD first: on S3 a PUT costs ten times a GET, and only the first chunk creates it.
        let started = layout::job_started(job);
        if self.store.size(&started).await?.is_none() {
            self.store.put_if_absent(&started, Vec::new()).await?;
        }
        let model = match self.model(&msg.model_id, msg.params).await? {
            Ok(m) => m,
            Err(reason) => return Ok(Attempt::Permanent(FailureKind::Model, reason)),
        };
        let expected_len =
            crate::format::chunk_payload_len(msg.params, model.n_features, msg.slots());
        if msg.length != expected_len {
            return Ok(Attempt::Permanent(
                FailureKind::InvalidChunk,
                format!(
                    "chunk {chunk} is {} bytes; model {} needs {expected_len}",
                    msg.length, msg.model_id
                ),
            ));
        }
        let sha = match msg.sha256_bytes() {
            Ok(s) => s,
            Err(e) => return Ok(Attempt::Permanent(FailureKind::InvalidChunk, e.to_string())),
        };
        if model.kind.bootstraps() {
            let Some(id) = msg.eval_key.as_ref() else {
                return Ok(Attempt::Permanent(
                    FailureKind::Model,
                    format!(
                        "model {} needs an evaluation key and the batch names none",
                        msg.model_id
                    ),
                ));
            };
            if let Err(reason) = self.eval_key(id).await? {
                return Ok(Attempt::Permanent(FailureKind::Model, reason));
            }
            if let Some(owner) = self.evaluator.eval_key_owner(id)
                && owner != msg.key_fingerprint
            {
                return Ok(Attempt::Permanent(
                    FailureKind::Model,
                    format!(
                        "evaluation key {id} belongs to secret key {owner}, but the batch was encrypted under {}; publish this key's evaluation key (`fhe-batch publish-key`) and name it",
                        msg.key_fingerprint
                    ),
                ));
            }
        }
        fault(FaultPoint::BeforeRead)?;
        let payload = self
            .store
            .get_range(&msg.batch_key, msg.offset, msg.length)
            .await?;
        if let Err(e) = crate::format::verify_chunk(&payload, msg.length, &sha) {
            return Ok(Attempt::Permanent(
                FailureKind::InvalidChunk,
                format!("chunk {chunk}: {e}"),
            ));
        }
        let started = std::time::Instant::now();
        let input = ChunkInput {
            payload: &payload,
            records: msg.records,
            slots: msg.slots(),
            eval_key: msg.eval_key.as_ref(),
        };
        let evaluated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.evaluator.evaluate(&model, &input)
        }));
        let body = match evaluated {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => {
                return Ok(Attempt::Permanent(
                    FailureKind::InvalidChunk,
                    format!("chunk {chunk}: {e}"),
                ));
            }
            // A panic may come from a passing condition of this machine as well as from a
            // bug that this chunk triggers: retry it, and let the dead-letter limit decide.
            Err(_) => {
                return Ok(Attempt::Transient(format!(
                    "internal error (panic) while evaluating chunk {chunk}"
                )));
            }
        };
        fault(FaultPoint::AfterEvaluate)?;
        let header = ResultHeader {
            params: msg.params,
            n_outputs: model.result_ciphertexts(msg.records, msg.params.polynomial_size()),
            chunk_index: chunk,
            chunk_count: msg.chunk_count,
            records: msg.records,
            plaintext_bits: model.plaintext_bits,
            model_id: msg.model_id,
            key_fingerprint: msg.key_fingerprint,
            first_record: msg.first_record,
        };
        if body.len() != header.body_len() {
            return Ok(Attempt::Permanent(
                FailureKind::Internal,
                format!("evaluator returned {} bytes for chunk {chunk}", body.len()),
            ));
        }
        let eval_us = started.elapsed().as_micros() as u64;
        fault(FaultPoint::BeforeResultWrite)?;
        let outcome = self
            .store
            .put_if_absent(&result_key, header.encode(&body))
            .await?;
        fault(FaultPoint::AfterResultWrite)?;
        tracing::debug!(%job, chunk, eval_us, ?outcome, "chunk result");
        Ok(Attempt::Done(match outcome {
            PutOutcome::Created => ChunkOutcome::Written {
                job: job.clone(),
                chunk,
            },
            PutOutcome::AlreadyExists => ChunkOutcome::AlreadyDone {
                job: job.clone(),
                chunk,
            },
        }))
    }

    /// Makes evaluation key `id` ready: from the evaluator's caches, else downloaded once.
    async fn eval_key(&self, id: &EvalKeyId) -> Result<Result<(), String>, StoreError> {
        if self.evaluator.has_eval_key(id) {
            return Ok(Ok(()));
        }
        let started = std::time::Instant::now();
        let bytes = match self
            .store
            .get(&layout::eval_key(id), MAX_EVAL_KEY_BYTES)
            .await
        {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => {
                return Ok(Err(format!(
                    "evaluation key {id} is not uploaded (keys/{id}/eval.key)"
                )));
            }
            Err(e) => return Err(e),
        };
        let fetched = started.elapsed();
        let len = bytes.len();
        let evaluator = &self.evaluator;
        let installed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            evaluator.install_eval_key(id, bytes)
        }));
        match installed {
            Ok(Ok(())) => {
                info!(
                    key = %id,
                    bytes = len,
                    fetch_ms = fetched.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    "evaluation key loaded"
                );
                Ok(Ok(()))
            }
            Ok(Err(e)) => Ok(Err(format!("evaluation key {id}: {e}"))),
            Err(_) => Ok(Err(format!("evaluation key {id} could not be loaded"))),
        }
    }

    /// Loads a model's server part once per worker and keeps it.
    async fn model(
        &self,
        id: &ModelId,
        params: ParamSet,
    ) -> Result<Result<Arc<ServerModel>, String>, StoreError> {
        if let Some(m) = self.models.lock().expect("model cache").get(id) {
            return Ok(Ok(m.clone()));
        }
        let manifest = match self
            .store
            .get(&layout::model_manifest(id), MAX_CLIENT_PART_BYTES)
            .await
        {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => {
                return Ok(Err(format!("model {id} is not published")));
            }
            Err(e) => return Err(e),
        };
        let manifest = match ModelManifest::from_bytes(&manifest) {
            Ok(m) => m,
            Err(e) => return Ok(Err(format!("model {id}: {e}"))),
        };
        let server = match self
            .store
            .get(&layout::model_server(id), MAX_SERVER_PART_BYTES)
            .await
        {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => {
                return Ok(Err(format!("model {id} has no server part")));
            }
            Err(e) => return Err(e),
        };
        let model = match manifest.open_server(&server) {
            Ok(m) if m.params == params && manifest.model_id == *id => Arc::new(m),
            Ok(_) => return Ok(Err(format!("model {id} does not match the batch"))),
            Err(e) => return Ok(Err(format!("model {id}: {e}"))),
        };
        self.models
            .lock()
            .expect("model cache")
            .insert(*id, model.clone());
        Ok(Ok(model))
    }
}

/// Runs one worker against a queue until `stop()` (checked before each receive) says so: receive,
/// process, report (`on_outcome` gets the outcome and its delivery), acknowledge on success; a
/// failed attempt is left for redelivery after the visibility timeout. Used by the local pipeline and `fhe-batch worker`; on AWS the Lambda
/// event source does this.
///
/// Queue trouble does not stop the loop: a retryable receive error is waited out with backoff,
/// and a failed acknowledgement only means the message comes back and is answered from the
/// existing result. Only a permanent receive error ends it.
pub async fn run_queue_worker<S, E, Q>(
    worker: &Worker<S, E>,
    queue: &Q,
    stop: impl Fn() -> bool,
    mut on_outcome: impl FnMut(&ChunkOutcome, &Delivery),
) -> Result<(), PipelineError>
where
    S: ObjectStore,
    E: ChunkEvaluator,
    Q: JobQueue,
{
    let backoff = crate::retry::RetryPolicy::default();
    let mut failed_receives = 0u32;
    loop {
        if stop() {
            return Ok(());
        }
        let deliveries = match queue.receive(1, Duration::from_millis(50)).await {
            Ok(d) => {
                failed_receives = 0;
                d
            }
            Err(QueueError::Backend {
                message,
                retryable: true,
            }) => {
                failed_receives += 1;
                warn!(%message, failed_receives, "receive failed; backing off");
                tokio::time::sleep(backoff.ceiling(failed_receives)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for d in deliveries {
            match worker.handle_message(&d.body, d.receive_count).await {
                Ok(outcome) => {
                    on_outcome(&outcome, &d);
                    let (job, chunk) = outcome.chunk();
                    if let Some(job) = job
                        && let Err(reason) = worker.probe(FaultPoint::BeforeAck, job, chunk)
                    {
                        warn!(message = %d.message_id, %reason, "not acknowledged");
                        continue;
                    }
                    if let Err(e) = queue.ack(&d.receipt).await {
                        warn!(message = %d.message_id, error = %e, "acknowledgement failed; the message will come back");
                    }
                }
                Err(e) => warn!(message = %d.message_id, error = %e, "left for redelivery"),
            }
        }
    }
}

impl ChunkOutcome {
    /// The job (when the message named one) and chunk of this outcome.
    pub fn chunk(&self) -> (Option<&JobId>, u32) {
        match self {
            ChunkOutcome::Written { job, chunk }
            | ChunkOutcome::AlreadyDone { job, chunk }
            | ChunkOutcome::Skipped { job, chunk } => (Some(job), *chunk),
            ChunkOutcome::Failed { job, chunk, .. } => (job.as_ref(), *chunk),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Status

/// Why a status request cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no job named {0}")]
    NotFound(JobId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Derives a job's state from the objects in the store (no database).
pub async fn job_status<S: ObjectStore>(store: &S, job: &JobId) -> Result<JobStatus, StatusError> {
    let read_record = |bytes: Vec<u8>| serde_json::from_slice::<FailureRecord>(&bytes).ok();
    let mut status = JobStatus {
        job: job.clone(),
        state: JobState::Queued,
        chunks_done: 0,
        chunks_total: 0,
        chunks_failed: 0,
        records: 0,
        model_id: None,
        created_unix_ms: None,
        failures: Vec::new(),
        results_prefix: layout::results_prefix(job),
    };
    let manifest = read_manifest(store, job).await?;
    let job_failure = match store.get(&layout::job_failure(job), MAX_RECORD_BYTES).await {
        Ok(b) => read_record(b),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let Some(manifest) = manifest else {
        if let Some(f) = job_failure {
            status.state = JobState::Failed;
            status.failures.push(f);
            return Ok(status);
        }
        // Uploaded but not yet ingested.
        if store.size(&layout::inbox(job)).await?.is_some() {
            return Ok(status);
        }
        return Err(StatusError::NotFound(job.clone()));
    };
    status.chunks_total = manifest.chunk_count;
    status.records = manifest.record_count;
    status.model_id = Some(manifest.model_id);
    status.created_unix_ms = Some(manifest.created_unix_ms);
    let done = chunk_set(store, &layout::results_prefix(job)).await?;
    status.chunks_done = done.keys().filter(|&&c| c < manifest.chunk_count).count() as u32;
    let errors = chunk_set(store, &layout::job_errors_prefix(job)).await?;
    let mut failed: Vec<(u32, String)> = errors
        .into_iter()
        .filter(|(c, _)| !done.contains_key(c))
        .collect();
    failed.sort();
    status.chunks_failed = failed.len() as u32;
    for (_, key) in failed.iter().take(20) {
        match store.get(key, MAX_RECORD_BYTES).await {
            Ok(b) => status.failures.extend(read_record(b)),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(f) = job_failure {
        status.failures.insert(0, f);
    }
    status.state = if !status.failures.is_empty() || status.chunks_failed > 0 {
        JobState::Failed
    } else if status.chunks_done == status.chunks_total {
        JobState::Succeeded
    } else if status.chunks_done > 0 || store.size(&layout::job_started(job)).await?.is_some() {
        JobState::Running
    } else {
        JobState::Queued
    };
    Ok(status)
}

/// Every job known to the store (those with a manifest or a job-level failure).
pub async fn list_jobs<S: ObjectStore>(store: &S) -> Result<Vec<JobId>, StoreError> {
    let mut jobs: Vec<JobId> = store
        .list(layout::jobs_prefix())
        .await?
        .iter()
        .filter_map(|k| {
            let rest = k.strip_prefix(layout::jobs_prefix())?;
            let (job, file) = rest.split_once('/')?;
            (file == "manifest.json" || file == "failed.json")
                .then(|| JobId::parse(job).ok())
                .flatten()
        })
        .collect();
    jobs.sort();
    jobs.dedup();
    Ok(jobs)
}
