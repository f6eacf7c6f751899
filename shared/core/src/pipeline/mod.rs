//! The pipeline's logic over the ports: ingest, worker and status. The Lambda functions and the
//! local runner are thin wiring around these.
//!
//! - [`ingest`](ingest_object): validates an uploaded batch from its header and queues one
//!   message per chunk;
//! - [`Worker`]: evaluates one chunk message into a result object, idempotently, and records
//!   the chunks that can never succeed;
//! - [`run_queue_worker`]: the receive, process, acknowledge loop of a worker outside Lambda;
//! - [`job_status`] and [`list_jobs`]: a job's state, derived from the objects in the store;
//! - [`retry_job`]: a failed job's next attempt, its unfinished chunks queued again
//!   ([`current_attempt`] says which attempt a job is at);
//! - [`FaultPoint`] and [`FaultProbe`]: where tests and the chaos benchmark inject faults.
//!
//! The evaluator port ([`ChunkEvaluator`]) lives in [`crate::ports`]; it is re-exported here
//! for the paths that name it under `pipeline`.

mod attempt;
mod deadletter;
mod faults;
mod ingest;
mod notify;
mod queue_loop;
mod resubmit;
mod status;
mod worker;

pub use crate::ports::{ChunkEvaluator, ChunkInput, EvalError, MAX_EVAL_KEY_BYTES};
pub use deadletter::{DeadLetterOutcome, record_dead_letter};
pub use faults::{FaultPoint, FaultProbe};
pub use ingest::{IngestOutcome, ingest_object, ingest_object_in};
pub use notify::{
    Claimant, CollectingNotifier, FanOut, NoNotifier, NotifyFailure, notify_attempt_if_ended,
    notify_if_ended,
};
pub use queue_loop::{LoopConfig, RetryDelays, run_queue_worker};
pub use resubmit::{RetryError, RetryOutcome, retry_job};
pub use status::{StatusError, job_status, list_jobs, list_tenant_jobs};
pub use worker::{ChunkOutcome, RetryLater, Worker, WorkerConfig};

use crate::ids::JobId;
use crate::job::{JobManifest, MAX_RECORD_BYTES};
use crate::layout;
use crate::ports::{ObjectStore, PutOutcome, QueueError, StoreError};
use std::collections::HashMap;

/// Writes a chunk's failure record (`jobs/<job>/errors/<chunk>.json`, or under
/// `attempt-<n>/` for a later attempt) create-once; the worker and the dead-letter handler
/// both record failures through this.
pub(crate) async fn write_chunk_failure<S: ObjectStore>(
    store: &S,
    job: &JobId,
    attempt: u32,
    chunk: u32,
    kind: crate::job::FailureKind,
    reason: String,
) -> Result<PutOutcome, StoreError> {
    let record = crate::job::FailureRecord {
        chunk: Some(chunk),
        kind,
        reason,
        at_unix_ms: now_unix_ms(),
        upload: None,
    };
    let bytes = serde_json::to_vec_pretty(&record).expect("record serializes");
    store
        .put_if_absent(&layout::attempt_chunk_error(job, attempt, chunk), bytes)
        .await
}

/// A job's current attempt: the highest attempt record (`jobs/<job>/attempts/<n>.json`), or 1
/// when it has none (every job before its first retry or corrected upload).
pub async fn current_attempt<S: ObjectStore>(store: &S, job: &JobId) -> Result<u32, StoreError> {
    Ok(store
        .list(&layout::attempts_prefix(job))
        .await?
        .iter()
        .filter_map(|k| layout::attempt_of_record(job, k))
        .max()
        .unwrap_or(1))
}

/// A failure record, or `None` when there is none (or an unreadable one).
async fn read_failure<S: ObjectStore>(
    store: &S,
    key: &str,
) -> Result<Option<crate::job::FailureRecord>, StoreError> {
    match store.get(key, MAX_RECORD_BYTES).await {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

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

/// A job's manifest, or `None` when it has none (or an unreadable one).
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
