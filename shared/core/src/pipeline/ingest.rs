//! Ingest: validates an uploaded batch from its header (two ranged GETs, never the ciphertext
//! body) and the model it names, writes the job manifest and queues one message per chunk. An
//! invalid batch ends as a FAILED job.

use super::{PipelineError, chunk_set, now_unix_ms, read_manifest};
use crate::format::{BatchHeader, BatchLimits, FIXED_HEADER_LEN, FormatError};
use crate::ids::JobId;
use crate::job::{ChunkMessage, FailureKind, FailureRecord, JOB_FORMAT_VERSION, JobManifest};
use crate::layout;
use crate::model::{MAX_CLIENT_PART_BYTES, ModelManifest};
use crate::ports::{JobQueue, MAX_EVAL_KEY_BYTES, ObjectStore, PutOutcome, StoreError};

use tracing::{info, warn};

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
    let ignored = |reason: String| {
        Ok(IngestOutcome::Ignored {
            key: key.to_string(),
            reason,
        })
    };
    let job = match layout::job_for_upload(key) {
        Ok((job, false)) => job,
        Ok((job, true)) => {
            warn!(key, %job, "the file name is not a job id; it runs under the mapped name");
            job
        }
        Err(e) => {
            warn!(key, error = %e, "ignoring object");
            return ignored(e.to_string());
        }
    };
    if store.size(&layout::job_failure(&job)).await?.is_some() {
        return ignored(format!("job {job} has already failed"));
    }
    let Some(size) = store.size(key).await? else {
        return ignored("the object no longer exists".into());
    };
    let header = match check_batch(store, key, size, limits).await {
        Ok(h) => h,
        Err(CheckError::Store(e)) => return Err(e.into()),
        Err(CheckError::Invalid { kind, reason }) => {
            return reject(store, &job, kind, reason).await;
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
    let mut pending: Vec<u32> = (0..header.chunks.len() as u32).collect();
    if created == PutOutcome::AlreadyExists {
        let existing = read_manifest(store, &job).await?;
        if existing.as_ref().map(|m| &m.header_sha256) != Some(&manifest.header_sha256) {
            warn!(%job, "a different batch was uploaded under an existing job id; refused");
            let reason = format!(
                "a different batch was uploaded as {key} while job {job} existed; it was not run: upload it under a new job name (for example {job}-2)"
            );
            // Visible in the job's status; one record per distinct upload (repeated events of
            // the same upload write nothing new).
            let record =
                serde_json::json!({ "key": key, "reason": reason, "at_unix_ms": now_unix_ms() });
            store
                .put_if_absent(
                    &format!(
                        "{}{}.json",
                        layout::job_refused_prefix(&job),
                        &manifest.header_sha256[..16]
                    ),
                    serde_json::to_vec_pretty(&record).expect("record serializes"),
                )
                .await?;
            return ignored(reason);
        }
        // Same upload seen again (S3 may repeat events, or a previous ingest died after the
        // manifest): queue again what has no result yet. Workers are idempotent.
        let done = chunk_set(store, &layout::results_prefix(&job)).await?;
        pending.retain(|c| !done.contains_key(c));
    }
    let n = queue_chunks(queue, &job, key, &header, &header_sha256, &pending).await?;
    Ok(if created == PutOutcome::Created {
        IngestOutcome::Queued { job, chunks: n }
    } else {
        IngestOutcome::Requeued { job, chunks: n }
    })
}

/// Reads and checks the batch's header, then the model it names.
async fn check_batch<S: ObjectStore>(
    store: &S,
    key: &str,
    size: u64,
    limits: &BatchLimits,
) -> Result<BatchHeader, CheckError> {
    let header = read_header(store, key, size, limits).await?;
    check_model(store, &header).await?;
    Ok(header)
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
async fn queue_chunks<Q: JobQueue>(
    queue: &Q,
    job: &JobId,
    key: &str,
    header: &BatchHeader,
    header_sha256: &[u8; 32],
    pending: &[u32],
) -> Result<u32, PipelineError> {
    // Each result is bound to this batch: the hash of its header, as the data owner can compute
    // it from the .fheb file.
    let bodies: Vec<String> = pending
        .iter()
        .map(|&i| {
            let entry = &header.chunks[i as usize];
            ChunkMessage::for_chunk(job, key, header, header_sha256, i, entry).to_body()
        })
        .collect();
    let n = bodies.len() as u32;
    queue.send_batch(bodies).await?;
    info!(%job, chunks = n, records = header.record_count, "batch queued");
    Ok(n)
}

async fn read_header<S: ObjectStore>(
    store: &S,
    key: &str,
    size: u64,
    limits: &BatchLimits,
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
    let hlen = BatchHeader::header_len_from_prefix(&prefix, limits).map_err(invalid_batch)?;
    if hlen > size {
        return Err(invalid_batch(FormatError::Truncated {
            what: "batch header",
            needed: hlen,
            got: size,
        }));
    }
    let bytes = store.get_range(key, 0, hlen).await?;
    let header = BatchHeader::parse(&bytes, limits).map_err(invalid_batch)?;
    header.check_object_size(size).map_err(invalid_batch)?;
    Ok(header)
}

/// Checks that the model the batch names is published and takes this batch.
async fn check_model<S: ObjectStore>(store: &S, header: &BatchHeader) -> Result<(), CheckError> {
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
        check_bootstrapping(store, header, &manifest).await
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
) -> Result<(), CheckError> {
    let id = header.model_id;
    let Some(key) = header.eval_key else {
        return Err(model_refuses(format!(
            "model {id} bootstraps and needs an evaluation key, but the batch names none (upload one with `fhe-batch publish-key` and encrypt with it)"
        )));
    };
    match store.size(&layout::eval_key(&key)).await? {
        None => {
            return Err(model_refuses(format!(
                "the batch names evaluation key {key}, which is not uploaded (keys/{key}/eval.key)"
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
