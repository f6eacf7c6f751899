//! Ingest: validates an uploaded batch from its header (two ranged GETs, never the ciphertext
//! body) and the model it names, writes the job manifest and queues one message per chunk. An
//! invalid batch ends as a FAILED job.
//!
//! A job name runs one batch. An upload under the name of an existing job is:
//! - the same batch again (a repeated event): its chunks without a result are queued again,
//!   unless the job has FAILED (then `fhe-batch retry` does that, as a new attempt);
//! - a new attempt when the job's current attempt was refused at ingest (no batch ran), and
//!   the upload is not that refused one again: a corrected batch, or the same file after the
//!   bucket gained what it lacked (the model, the evaluation key);
//! - otherwise refused visibly (`jobs/<job>/refused/`, listed by status) with the job's state
//!   and what to do instead: results of two batches never share a job's `results/<job>/`.

use super::{
    PipelineError, chunk_set, current_attempt, job_status, now_unix_ms, read_failure, read_manifest,
};
use crate::format::{BatchHeader, BatchLimits, FIXED_HEADER_LEN, FormatError};
use crate::ids::JobId;
use crate::job::{
    AttemptCause, AttemptRecord, ChunkMessage, FailureKind, FailureRecord, JOB_FORMAT_VERSION,
    JobManifest, JobState, MAX_RECORD_BYTES,
};
use crate::layout::{self, Tenancy};
use crate::model::{MAX_CLIENT_PART_BYTES, ModelManifest};
use crate::ports::{JobQueue, MAX_EVAL_KEY_BYTES, ObjectStore, PutOutcome, StoreError};
use sha2::{Digest, Sha256};

use tracing::{info, warn};

/// What ingest did with an uploaded object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// The batch is valid: manifest written, one message per chunk queued.
    Queued { job: JobId, chunks: u32 },
    /// A repeated event for a job already ingested: missing chunks were queued again.
    Requeued { job: JobId, chunks: u32 },
    /// A corrected upload under the name of a job whose batch was refused at ingest: it runs
    /// as the job's attempt `attempt`.
    Resubmitted {
        job: JobId,
        attempt: u32,
        chunks: u32,
    },
    /// The batch is invalid: the job's attempt `attempt` is FAILED with this reason.
    Rejected {
        job: JobId,
        attempt: u32,
        reason: String,
    },
    /// A different batch under the name of a job that ran one (or is running it): not run,
    /// recorded under `jobs/<job>/refused/` with this reason.
    Refused { job: JobId, reason: String },
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
            IngestOutcome::Resubmitted {
                job,
                attempt,
                chunks,
            } => serde_json::json!({
                "job": job, "outcome": "resubmitted", "attempt": attempt, "chunks": chunks
            }),
            IngestOutcome::Rejected {
                job,
                attempt,
                reason,
            } => serde_json::json!({
                "job": job, "outcome": "rejected", "attempt": attempt, "reason": reason
            }),
            IngestOutcome::Refused { job, reason } => {
                serde_json::json!({"job": job, "outcome": "refused", "reason": reason})
            }
            IngestOutcome::Ignored { key, reason } => {
                serde_json::json!({"key": key, "outcome": "ignored", "reason": reason})
            }
        }
    }
}

/// Why a batch's checks stopped: storage trouble (retried by the trigger), or a batch that can
/// never be processed (the job is rejected with this kind and reason).
enum CheckError {
    Store(StoreError),
    Invalid { kind: FailureKind, reason: String },
}

impl From<StoreError> for CheckError {
    fn from(e: StoreError) -> Self {
        CheckError::Store(e)
    }
}

/// An invalid batch.
fn invalid_batch(e: FormatError) -> CheckError {
    CheckError::Invalid {
        kind: FailureKind::InvalidBatch,
        reason: format!("invalid batch: {e}"),
    }
}

/// A batch its model cannot take.
fn model_refuses(reason: String) -> CheckError {
    CheckError::Invalid {
        kind: FailureKind::Model,
        reason,
    }
}

/// An uploaded object after the checks: the header (or why it cannot run), and the upload's
/// identity, `<size>:<SHA-256 of the bytes read>` (the header, or as much of it as was
/// readable), which tells a repeated event of a refused upload from a new upload.
struct Checked {
    header: Result<BatchHeader, Invalid>,
    upload: String,
}

/// Why a batch can never run.
struct Invalid {
    kind: FailureKind,
    reason: String,
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
    ingest_object_in(store, queue, key, limits, Tenancy::Single).await
}

/// [`ingest_object`] on a stack of the given tenancy: on a multi-tenant stack the upload must
/// be `inbox/<tenant>/<job>.fheb`, the job is `<tenant>/<job>` and its evaluation key is read
/// from `keys/<tenant>/`.
pub async fn ingest_object_in<S: ObjectStore, Q: JobQueue>(
    store: &S,
    queue: &Q,
    key: &str,
    limits: &BatchLimits,
    tenancy: Tenancy,
) -> Result<IngestOutcome, PipelineError> {
    let job = match layout::job_for_upload_in(key, tenancy) {
        Ok((job, false)) => job,
        Ok((job, true)) => {
            warn!(key, %job, "the file name is not a job id; it runs under the mapped name");
            job
        }
        Err(e) => {
            warn!(key, error = %e, "ignoring object");
            return Ok(ignored(key, e.to_string()));
        }
    };
    let Some(size) = store.size(key).await? else {
        return Ok(ignored(key, "the object no longer exists".into()));
    };
    let checked = check_batch(store, key, size, limits, &job).await?;
    if let Some(existing) = read_manifest(store, &job).await? {
        return ran_before(store, queue, &job, key, existing, checked).await;
    }
    let attempt = current_attempt(store, &job).await?;
    let attempt = match read_failure(store, &layout::attempt_failure(&job, attempt)).await? {
        None => attempt,
        Some(refused) => match next_attempt(store, &job, key, attempt, &refused, &checked).await? {
            Ok(next) => next,
            Err(reason) => return Ok(ignored(key, reason)),
        },
    };
    let header = match checked.header {
        Ok(h) => h,
        Err(Invalid { kind, reason }) => {
            return reject(store, &job, attempt, kind, reason, checked.upload).await;
        }
    };
    // What every result of this batch is bound to, and what the job record names.
    let header_sha256 = header.sha256();
    let manifest = job_manifest(&job, key, size, &header, &header_sha256);
    let created = store
        .put_if_absent(
            &layout::job_manifest(&job),
            serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
        )
        .await?;
    if created == PutOutcome::AlreadyExists {
        // Another ingest of an upload under this name won the race.
        let existing = read_manifest(store, &job).await?.unwrap_or(manifest);
        let checked = Checked {
            header: Ok(header),
            upload: checked.upload,
        };
        return ran_before(store, queue, &job, key, existing, checked).await;
    }
    let pending: Vec<u32> = (0..header.chunks.len() as u32).collect();
    let chunks = queue_chunks(queue, &job, key, &header, &header_sha256, attempt, &pending).await?;
    Ok(if attempt == 1 {
        IngestOutcome::Queued { job, chunks }
    } else {
        info!(%job, attempt, "a corrected upload runs as a new attempt");
        IngestOutcome::Resubmitted {
            job,
            attempt,
            chunks,
        }
    })
}

fn ignored(key: &str, reason: String) -> IngestOutcome {
    IngestOutcome::Ignored {
        key: key.to_string(),
        reason,
    }
}

/// The job's current attempt was refused at ingest (`refused` is its record): the upload runs
/// as the next attempt, unless it is that refused upload again, refused for the same reason
/// (a repeated event, or `fhe-batch run` seeing it again in the inbox). `Ok(Err(reason))`
/// means nothing is to be done.
async fn next_attempt<S: ObjectStore>(
    store: &S,
    job: &JobId,
    key: &str,
    attempt: u32,
    refused: &FailureRecord,
    checked: &Checked,
) -> Result<Result<u32, String>, StoreError> {
    let same_upload = refused
        .upload
        .as_deref()
        .is_none_or(|u| u == checked.upload);
    if let Err(Invalid { reason, .. }) = &checked.header
        && same_upload
        && *reason == refused.reason
    {
        return Ok(Err(format!(
            "job {job} has already failed ({reason}); upload a corrected batch as {key} and it runs as attempt {}",
            attempt + 1
        )));
    }
    let next = attempt + 1;
    let record = AttemptRecord {
        attempt: next,
        cause: AttemptCause::Upload,
        upload: checked.upload.clone(),
        at_unix_ms: now_unix_ms(),
    };
    let key_next = layout::attempt_record(job, next);
    let bytes = serde_json::to_vec_pretty(&record).expect("record serializes");
    if store.put_if_absent(&key_next, bytes).await? == PutOutcome::AlreadyExists {
        // A repeated event of this upload racing this one is the same attempt; anything else
        // started the attempt with another upload.
        let theirs: Option<AttemptRecord> = match store.get(&key_next, MAX_RECORD_BYTES).await {
            Ok(b) => serde_json::from_slice(&b).ok(),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        if theirs.is_none_or(|t| t.upload != checked.upload) {
            return Ok(Err(format!(
                "attempt {next} of job {job} was started by another upload meanwhile"
            )));
        }
    }
    Ok(Ok(next))
}

/// An upload under the name of a job that has run a batch (it has a manifest): the same batch
/// again is re-queued where it has no result (unless the job FAILED: `fhe-batch retry` does
/// that), any other upload is refused visibly.
async fn ran_before<S: ObjectStore, Q: JobQueue>(
    store: &S,
    queue: &Q,
    job: &JobId,
    key: &str,
    existing: JobManifest,
    checked: Checked,
) -> Result<IngestOutcome, PipelineError> {
    let status = match job_status(store, job).await {
        Ok(s) => s,
        Err(super::StatusError::Store(e)) => return Err(e.into()),
        Err(super::StatusError::NotFound(_)) => {
            return Ok(ignored(key, format!("job {job} vanished")));
        }
    };
    let same = match &checked.header {
        Ok(header) => {
            let sha = header.sha256();
            (hex::encode(sha) == existing.header_sha256).then_some((header, sha))
        }
        Err(_) => None,
    };
    let Some((header, header_sha256)) = same else {
        return refuse(store, job, key, &status, &checked.upload).await;
    };
    if status.state == JobState::Failed {
        return Ok(ignored(
            key,
            format!(
                "job {job} FAILED; `fhe-batch retry {job}` queues its unfinished chunks again as a new attempt"
            ),
        ));
    }
    // Same upload seen again (S3 may repeat events, or a previous ingest died after the
    // manifest): queue again what has no result yet. Workers are idempotent.
    let done = chunk_set(store, &layout::results_prefix(job)).await?;
    let pending: Vec<u32> = (0..header.chunks.len() as u32)
        .filter(|c| !done.contains_key(c))
        .collect();
    let chunks = queue_chunks(
        queue,
        job,
        key,
        header,
        &header_sha256,
        status.attempt,
        &pending,
    )
    .await?;
    Ok(IngestOutcome::Requeued {
        job: job.clone(),
        chunks,
    })
}

/// Refuses an upload under the name of a job that runs or ran another batch: one record per
/// distinct upload under `jobs/<job>/refused/` (repeated events write nothing new), with the
/// job's state and what to do instead.
async fn refuse<S: ObjectStore>(
    store: &S,
    job: &JobId,
    key: &str,
    status: &crate::job::JobStatus,
    upload: &str,
) -> Result<IngestOutcome, PipelineError> {
    let what = "a different batch was uploaded as";
    let reason = match status.state {
        JobState::Failed => format!(
            "{what} {key} after job {job} FAILED with its batch run ({}/{} chunks have results); it was not run, because a job runs one batch and results of two batches never mix: `fhe-batch retry {job}` runs the unfinished chunks of the job's own batch again, or upload the new batch under a new job name (for example {job}-2)",
            status.chunks_done, status.chunks_total
        ),
        state => format!(
            "{what} {key} while job {job} is {state}; it was not run: upload it under a new job name (for example {job}-2)"
        ),
    };
    warn!(%job, state = %status.state, "a different batch was uploaded under an existing job id; refused");
    let record = serde_json::json!({ "key": key, "reason": reason, "at_unix_ms": now_unix_ms() });
    let id = hex::encode(Sha256::digest(upload.as_bytes()));
    store
        .put_if_absent(
            &format!("{}{}.json", layout::job_refused_prefix(job), &id[..16]),
            serde_json::to_vec_pretty(&record).expect("record serializes"),
        )
        .await?;
    Ok(IngestOutcome::Refused {
        job: job.clone(),
        reason,
    })
}

/// Reads and checks the batch's header, then the model it names.
async fn check_batch<S: ObjectStore>(
    store: &S,
    key: &str,
    size: u64,
    limits: &BatchLimits,
    job: &JobId,
) -> Result<Checked, StoreError> {
    let mut seen = Vec::new();
    let mut header = read_header(store, key, size, limits, &mut seen).await;
    if let Ok(h) = &header
        && let Err(e) = check_model(store, h, job).await
    {
        header = Err(e);
    }
    let header = match header {
        Ok(h) => Ok(h),
        Err(CheckError::Invalid { kind, reason }) => Err(Invalid { kind, reason }),
        Err(CheckError::Store(e)) => return Err(e),
    };
    Ok(Checked {
        header,
        upload: format!("{size}:{}", hex::encode(Sha256::digest(&seen))),
    })
}

/// The manifest of a job whose batch passed the checks.
fn job_manifest(
    job: &JobId,
    key: &str,
    size: u64,
    header: &BatchHeader,
    header_sha256: &[u8; 32],
) -> JobManifest {
    JobManifest {
        format_version: JOB_FORMAT_VERSION,
        job: job.clone(),
        batch_key: key.to_string(),
        batch_bytes: size,
        header_sha256: hex::encode(header_sha256),
        model_id: header.model_id,
        key_fingerprint: header.key_fingerprint,
        params: header.params,
        record_count: header.record_count,
        input_columns: header.input_columns,
        chunk_count: header.chunks.len() as u32,
        created_unix_ms: now_unix_ms(),
    }
}

/// Queues one message per pending chunk; returns how many.
pub(super) async fn queue_chunks<Q: JobQueue>(
    queue: &Q,
    job: &JobId,
    key: &str,
    header: &BatchHeader,
    header_sha256: &[u8; 32],
    attempt: u32,
    pending: &[u32],
) -> Result<u32, PipelineError> {
    // Each result is bound to this batch: the hash of its header, as the data owner can compute
    // it from the .fheb file.
    let bodies: Vec<String> = pending
        .iter()
        .map(|&i| {
            let entry = &header.chunks[i as usize];
            ChunkMessage::for_chunk(job, key, header, header_sha256, i, entry)
                .with_attempt(attempt)
                .to_body()
        })
        .collect();
    let n = bodies.len() as u32;
    queue.send_batch(bodies).await?;
    info!(%job, attempt, chunks = n, records = header.record_count, "batch queued");
    Ok(n)
}

async fn read_header<S: ObjectStore>(
    store: &S,
    key: &str,
    size: u64,
    limits: &BatchLimits,
    seen: &mut Vec<u8>,
) -> Result<BatchHeader, CheckError> {
    if size > limits.max_batch_bytes {
        return Err(invalid_batch(FormatError::TooLarge {
            what: "batch size in bytes",
            value: size,
            limit: limits.max_batch_bytes,
        }));
    }
    let prefix = store
        .get_range(key, 0, size.min(FIXED_HEADER_LEN as u64))
        .await?;
    seen.clone_from(&prefix);
    let hlen = BatchHeader::header_len_from_prefix(&prefix, limits).map_err(invalid_batch)?;
    if hlen > size {
        return Err(invalid_batch(FormatError::Truncated {
            what: "batch header",
            needed: hlen,
            got: size,
        }));
    }
    let bytes = store.get_range(key, 0, hlen).await?;
    seen.clone_from(&bytes);
    let header = BatchHeader::parse(&bytes, limits).map_err(invalid_batch)?;
    header.check_object_size(size).map_err(invalid_batch)?;
    Ok(header)
}

/// Checks that the model the batch names is published and takes this batch.
async fn check_model<S: ObjectStore>(
    store: &S,
    header: &BatchHeader,
    job: &JobId,
) -> Result<(), CheckError> {
    let id = header.model_id;
    let bytes = match store
        .get(&layout::model_manifest(&id), MAX_CLIENT_PART_BYTES)
        .await
    {
        Ok(b) => b,
        Err(StoreError::NotFound { .. }) => {
            return Err(model_refuses(format!(
                "the batch was encrypted for model {id}, which is not published in this bucket (models/{id}/)"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let manifest = ModelManifest::from_bytes(&bytes)
        .map_err(|e| model_refuses(format!("model {id} cannot be used: {e}")))?;
    if manifest.model_id != id {
        return Err(model_refuses(format!(
            "model {id}'s manifest names another model ({})",
            manifest.model_id
        )));
    }
    if manifest.params != header.params {
        return Err(model_refuses(format!(
            "the batch uses parameter set {} but model {id} uses {}",
            header.params, manifest.params
        )));
    }
    if manifest.input_columns != header.input_columns {
        return Err(model_refuses(format!(
            "the batch has {} ciphertext columns per record but model {id} takes {}",
            header.input_columns, manifest.input_columns
        )));
    }
    manifest
        .check_encryption(header.encryption)
        .map_err(|e| model_refuses(format!("the batch was encrypted with a public key and {e}")))?;
    if manifest.family.bootstraps() {
        check_bootstrapping(store, header, &manifest, job).await
    } else if header.eval_key.is_some() {
        Err(model_refuses(format!(
            "the batch names an evaluation key but model {id} does not bootstrap"
        )))
    } else {
        Ok(())
    }
}

/// A bootstrapping model: the batch names an uploaded evaluation key within the size limit,
/// and its chunks fit in the time a worker may spend on one.
async fn check_bootstrapping<S: ObjectStore>(
    store: &S,
    header: &BatchHeader,
    manifest: &ModelManifest,
    job: &JobId,
) -> Result<(), CheckError> {
    let id = header.model_id;
    let Some(key) = header.eval_key else {
        return Err(model_refuses(format!(
            "model {id} bootstraps and needs an evaluation key, but the batch names none (upload one with `fhe-batch publish-key` and encrypt with it)"
        )));
    };
    let location = layout::eval_key_for(job, &key);
    match store.size(&location).await? {
        None => {
            return Err(model_refuses(format!(
                "the batch names evaluation key {key}, which is not uploaded ({location})"
            )));
        }
        Some(n) if n > MAX_EVAL_KEY_BYTES => {
            return Err(model_refuses(format!(
                "evaluation key {key} is {n} bytes; the limit is {MAX_EVAL_KEY_BYTES}"
            )));
        }
        Some(_) => {}
    }
    let budget = crate::budget::ChunkBudget::from_env();
    let seconds = budget.chunk_seconds(header.records_per_chunk as u64, manifest.pbs_per_record);
    if seconds > budget.max_chunk_seconds() {
        return Err(model_refuses(format!(
            "chunks of {} records cost about {seconds:.0} s each at {} bootstraps per record, past the {:.0} s a worker may spend; encrypt with smaller chunks",
            header.records_per_chunk,
            manifest.pbs_per_record,
            budget.max_chunk_seconds()
        )));
    }
    Ok(())
}

/// Ends attempt `attempt` of the job as FAILED at ingest, naming the refused upload.
async fn reject<S: ObjectStore>(
    store: &S,
    job: &JobId,
    attempt: u32,
    kind: FailureKind,
    reason: String,
    upload: String,
) -> Result<IngestOutcome, PipelineError> {
    warn!(%job, attempt, %reason, "batch rejected");
    let record = FailureRecord {
        chunk: None,
        kind,
        reason: reason.clone(),
        at_unix_ms: now_unix_ms(),
        upload: Some(upload),
    };
    store
        .put_if_absent(
            &layout::attempt_failure(job, attempt),
            serde_json::to_vec_pretty(&record).expect("record serializes"),
        )
        .await?;
    Ok(IngestOutcome::Rejected {
        job: job.clone(),
        attempt,
        reason,
    })
}

/// The header of an uploaded batch as ingest reads it (for a retry of its job): `Ok(Err)`
/// with the reason when it is no longer a valid batch.
pub(super) async fn read_batch_header<S: ObjectStore>(
    store: &S,
    key: &str,
    size: u64,
) -> Result<Result<BatchHeader, String>, StoreError> {
    match read_header(store, key, size, &BatchLimits::default(), &mut Vec::new()).await {
        Ok(h) => Ok(Ok(h)),
        Err(CheckError::Invalid { reason, .. }) => Ok(Err(reason)),
        Err(CheckError::Store(e)) => Err(e),
    }
}
