//! The dead-letter handler: a job always ends. A chunk whose worker died on every attempt
//! (timeout, out of memory, throttling) reaches the dead-letter queue with nothing written, and
//! its job would read RUNNING forever; this records the chunk's failure with the reason, so the
//! job ends FAILED. A chunk that succeeded meanwhile, or whose failure the worker already
//! recorded (its last receive), is left as it is, and so is a message of an earlier attempt of
//! a job that was retried since (it must not fail the new attempt).

use super::{current_attempt, write_chunk_failure};
use crate::ids::JobId;
use crate::job::{ChunkMessage, FailureKind};
use crate::layout;
use crate::ports::{ObjectStore, PutOutcome, StoreError};
use tracing::warn;

/// What the dead-letter handler did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterOutcome {
    /// The chunk's failure was recorded: its job is FAILED.
    Recorded { job: JobId, chunk: u32 },
    /// The chunk already has a result or a failure record.
    AlreadySettled { job: JobId, chunk: u32 },
    /// The message belongs to an earlier attempt than the job's current one: nothing written.
    Stale { job: JobId, chunk: u32 },
    /// Not a chunk message (it names no job to fail).
    Unattributable { reason: String },
}

impl DeadLetterOutcome {
    /// The job and chunk the dead letter named.
    pub fn chunk(&self) -> Option<(&JobId, u32)> {
        match self {
            Self::Recorded { job, chunk }
            | Self::AlreadySettled { job, chunk }
            | Self::Stale { job, chunk } => Some((job, *chunk)),
            Self::Unattributable { .. } => None,
        }
    }
}

/// Records the failure of the chunk a dead-lettered message names. `receive_count` is how
/// often the job queue delivered it (the dead-letter limit). Only storage trouble is an error
/// (the message is then retried from the dead-letter queue).
pub async fn record_dead_letter<S: ObjectStore>(
    store: &S,
    body: &str,
    receive_count: u32,
) -> Result<DeadLetterOutcome, StoreError> {
    let msg = match ChunkMessage::parse(body) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "a dead letter that is not a chunk message");
            return Ok(DeadLetterOutcome::Unattributable {
                reason: e.to_string(),
            });
        }
    };
    let (job, chunk) = (msg.job.clone(), msg.chunk);
    let settled = DeadLetterOutcome::AlreadySettled {
        job: job.clone(),
        chunk,
    };
    if store
        .size(&layout::chunk_result(&job, chunk))
        .await?
        .is_some()
    {
        return Ok(settled);
    }
    let current = current_attempt(store, &job).await?;
    if msg.attempt != current {
        warn!(%job, chunk, attempt = msg.attempt, current, "a dead letter of another attempt; nothing recorded");
        return Ok(DeadLetterOutcome::Stale { job, chunk });
    }
    let reason = format!(
        "no attempt at chunk {chunk} finished in {receive_count} deliveries: the worker timed out, ran out of memory or was throttled (see the worker function's logs); give the worker more memory or time and run `fhe-batch retry {job}`, or encrypt with smaller chunks (--chunk-records) and upload under a new job name"
    );
    match write_chunk_failure(store, &job, current, chunk, FailureKind::WorkerLost, reason).await? {
        PutOutcome::Created => {
            warn!(%job, chunk, "dead letter recorded as the chunk's failure");
            Ok(DeadLetterOutcome::Recorded { job, chunk })
        }
        PutOutcome::AlreadyExists => Ok(settled),
    }
}
