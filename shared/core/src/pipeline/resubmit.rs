//! `fhe-batch retry`: a FAILED job's next attempt. The same batch runs again where it has no
//! result: the chunk results already written stay (each is bound to the job and the batch
//! header, which do not change), the chunks without one are queued with the new attempt's
//! number, and the new attempt starts with no failures and tells its end once.

use super::ingest::{queue_chunks, read_batch_header};
use super::{PipelineError, chunk_set, job_status, now_unix_ms, read_manifest};
use crate::ids::JobId;
use crate::job::{AttemptCause, AttemptRecord, FailureRecord, JobState};
use crate::layout;
use crate::ports::{JobQueue, ObjectStore, PutOutcome, QueueError, StoreError};
use sha2::{Digest, Sha256};
use tracing::info;

/// What a retry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOutcome {
    pub job: JobId,
    /// The attempt now running (2, 3, ...).
    pub attempt: u32,
    /// Chunks queued again (those without a result).
    pub chunks_queued: u32,
    /// Chunks whose results were kept.
    pub chunks_kept: u32,
    pub chunks_total: u32,
    /// The failures of the attempt retried (the first 20).
    pub retried_failures: Vec<FailureRecord>,
}

/// Why a job was not retried.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error(
        "there is no job {0} in this bucket: check the name (`fhe-batch status` lists the jobs)"
    )]
    NotFound(JobId),
    #[error("job {job} is {state}: only a FAILED job is retried{hint}")]
    NotFailed {
        job: JobId,
        state: JobState,
        hint: &'static str,
    },
    #[error(
        "job {job}'s batch was refused at ingest ({reason}), so the same bytes cannot run: upload a corrected batch under the same name (`fhe-batch submit --job {job} FILE`) and it runs as attempt {next}; if what was missing was the model or the evaluation key, publish it and upload the same file again"
    )]
    RejectedAtIngest {
        job: JobId,
        reason: String,
        next: u32,
    },
    #[error(
        "the batch of job {job} ({key}) {detail}, so its chunks cannot run again: upload the batch under a new job name"
    )]
    BatchChanged {
        job: JobId,
        key: String,
        detail: String,
    },
    #[error("attempt {attempt} of job {job} was started by another retry or upload meanwhile")]
    Raced { job: JobId, attempt: u32 },
    #[error(
        "attempt {attempt} of job {job} is recorded but its chunks could not be queued ({source}); a repeated ingest queues a running job's unfinished chunks: run `fhe-batch ingest inbox/{job}.fheb` (on AWS) or `fhe-batch run` (local bucket)"
    )]
    Queue {
        job: JobId,
        attempt: u32,
        #[source]
        source: QueueError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Starts the next attempt of a FAILED job whose batch ran (chunk failures, dead-lettered
/// chunks): writes `jobs/<job>/attempts/<n>.json` create-once, then queues the chunks without
/// a result. Refuses a job that has not failed, a job whose batch was refused at ingest (a
/// corrected upload is its next attempt), and a batch that is gone or was replaced.
pub async fn retry_job<S: ObjectStore, Q: JobQueue>(
    store: &S,
    queue: &Q,
    job: &JobId,
) -> Result<RetryOutcome, RetryError> {
    let status = match job_status(store, job).await {
        Ok(s) => s,
        Err(super::StatusError::NotFound(_)) => return Err(RetryError::NotFound(job.clone())),
        Err(super::StatusError::Store(e)) => return Err(e.into()),
    };
    let next = status.attempt + 1;
    if status.state != JobState::Failed {
        let hint = match status.state {
            JobState::Succeeded => " (its results are complete)",
            _ => " (wait for it to end: `fhe-batch status JOB --wait`)",
        };
        return Err(RetryError::NotFailed {
            job: job.clone(),
            state: status.state,
            hint,
        });
    }
    let manifest = match read_manifest(store, job).await? {
        Some(m) if !status.rejected_at_ingest() => m,
        _ => {
            let reason = status
                .failures
                .first()
                .map_or_else(|| "no reason recorded".into(), |f| f.reason.clone());
            return Err(RetryError::RejectedAtIngest {
                job: job.clone(),
                reason,
                next,
            });
        }
    };
    let changed = |detail: String| RetryError::BatchChanged {
        job: job.clone(),
        key: manifest.batch_key.clone(),
        detail,
    };
    let Some(size) = store.size(&manifest.batch_key).await? else {
        return Err(changed("is no longer in the bucket".into()));
    };
    let header = match read_batch_header(store, &manifest.batch_key, size).await? {
        Ok(h) => h,
        Err(reason) => return Err(changed(format!("is no longer a valid batch ({reason})"))),
    };
    let header_sha256: [u8; 32] = Sha256::digest(header.encode()).into();
    if hex::encode(header_sha256) != manifest.header_sha256 || size != manifest.batch_bytes {
        return Err(changed(
            "was replaced by another upload since the job ran".into(),
        ));
    }
    let record = AttemptRecord {
        attempt: next,
        cause: AttemptCause::Retry,
        upload: format!("{size}:{}", manifest.header_sha256),
        at_unix_ms: now_unix_ms(),
    };
    let bytes = serde_json::to_vec_pretty(&record).expect("record serializes");
    if store
        .put_if_absent(&layout::attempt_record(job, next), bytes)
        .await?
        == PutOutcome::AlreadyExists
    {
        return Err(RetryError::Raced {
            job: job.clone(),
            attempt: next,
        });
    }
    let done = chunk_set(store, &layout::results_prefix(job)).await?;
    let pending: Vec<u32> = (0..header.chunks.len() as u32)
        .filter(|c| !done.contains_key(c))
        .collect();
    let key = &manifest.batch_key;
    let queued = queue_chunks(queue, job, key, &header, &header_sha256, next, &pending).await;
    let chunks_queued = match queued {
        Ok(n) => n,
        Err(PipelineError::Queue(source)) => {
            return Err(RetryError::Queue {
                job: job.clone(),
                attempt: next,
                source,
            });
        }
        Err(PipelineError::Store(e)) => return Err(e.into()),
    };
    info!(%job, attempt = next, chunks = chunks_queued, "job retried");
    Ok(RetryOutcome {
        job: job.clone(),
        attempt: next,
        chunks_queued,
        chunks_kept: header.chunks.len() as u32 - chunks_queued,
        chunks_total: header.chunks.len() as u32,
        retried_failures: status.failures,
    })
}
