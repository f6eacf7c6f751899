//! Job manifests, chunk messages, failure records and job status.

use crate::format::{BatchHeader, ChunkEntry};
use crate::ids::{JobId, KeyFingerprint, ModelId};
use crate::params::ParamSet;
use serde::{Deserialize, Serialize};

pub const JOB_FORMAT_VERSION: u32 = 1;
/// Largest chunk message we send or accept (SQS allows 256 KiB; ours are ~500 bytes).
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024;
/// Largest job manifest or failure record read back.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

/// Refuses a batch of message bodies if any exceeds [`MAX_MESSAGE_BYTES`].
pub fn check_message_sizes(bodies: &[String]) -> Result<(), crate::ports::QueueError> {
    match bodies.iter().find(|b| b.len() > MAX_MESSAGE_BYTES) {
        Some(b) => Err(crate::ports::QueueError::TooLarge {
            size: b.len(),
            limit: MAX_MESSAGE_BYTES,
        }),
        None => Ok(()),
    }
}

/// Written once by ingest at `jobs/<job>/manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobManifest {
    pub format_version: u32,
    pub job: JobId,
    pub batch_key: String,
    pub batch_bytes: u64,
    /// SHA-256 of the batch header: identifies the exact upload this job is about.
    pub header_sha256: String,
    pub model_id: ModelId,
    pub key_fingerprint: KeyFingerprint,
    pub params: ParamSet,
    pub record_count: u64,
    /// Ciphertext columns per record.
    #[serde(alias = "feature_count")]
    pub input_columns: u32,
    pub chunk_count: u32,
    pub created_unix_ms: u64,
}

/// The claim-check message for one chunk: S3 pointers and metadata, never ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkMessage {
    pub v: u32,
    pub job: JobId,
    pub batch_key: String,
    pub chunk: u32,
    pub chunk_count: u32,
    pub offset: u64,
    pub length: u64,
    pub records: u32,
    pub first_record: u64,
    pub sha256: String,
    pub model_id: ModelId,
    pub key_fingerprint: KeyFingerprint,
    pub params: ParamSet,
    /// Records per chunk of the batch when fewer than N (format version 2).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "slots")]
    pub records_per_chunk: Option<u32>,
    /// The evaluation key the chunk needs (models that bootstrap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_key: Option<crate::ids::EvalKeyId>,
    /// SHA-256 of the batch header (hex): the result is bound to it and to the job
    /// ([`crate::format::ResultBinding`]). Absent in messages queued by older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_header_sha256: Option<String>,
    /// How the chunk was encrypted (absent: with the secret key, as every older message).
    #[serde(default, skip_serializing_if = "is_secret_key")]
    pub encryption: crate::params::Encryption,
    /// The job's attempt this message belongs to (1 when absent: messages queued before
    /// attempts existed, and every first attempt's, which leave it out). A worker drops a
    /// message of an earlier attempt than the job's current one.
    #[serde(default = "first_attempt", skip_serializing_if = "is_first_attempt")]
    pub attempt: u32,
}

fn is_secret_key(e: &crate::params::Encryption) -> bool {
    *e == crate::params::Encryption::SecretKey
}

fn first_attempt() -> u32 {
    1
}

fn is_first_attempt(n: &u32) -> bool {
    *n == 1
}

/// `jobs/<job>/attempts/<n>.json`: attempt `n` (2, 3, ...) of a job, created once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub cause: AttemptCause,
    /// The upload the attempt runs, as [`FailureRecord::upload`] names one.
    pub upload: String,
    pub at_unix_ms: u64,
}

/// Why a job has another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptCause {
    /// `fhe-batch retry`: the same batch, its chunks without a result queued again.
    Retry,
    /// A new upload under the name of a job whose batch was refused at ingest.
    Upload,
}

/// A chunk message that cannot be processed, ever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunk message: {0}")]
pub struct MessageError(pub String);

impl ChunkMessage {
    pub fn for_chunk(
        job: &JobId,
        batch_key: &str,
        header: &BatchHeader,
        header_sha256: &[u8; 32],
        index: u32,
        entry: &ChunkEntry,
    ) -> Self {
        let n = header.params.polynomial_size() as u32;
        let per_chunk = header.records_per_chunk;
        Self {
            v: JOB_FORMAT_VERSION,
            job: job.clone(),
            batch_key: batch_key.to_string(),
            chunk: index,
            chunk_count: header.chunks.len() as u32,
            offset: entry.offset,
            length: entry.length,
            records: entry.records,
            first_record: index as u64 * per_chunk as u64,
            sha256: hex::encode(entry.sha256),
            model_id: header.model_id,
            key_fingerprint: header.key_fingerprint,
            params: header.params,
            records_per_chunk: (per_chunk != n).then_some(per_chunk),
            eval_key: header.eval_key,
            batch_header_sha256: Some(hex::encode(header_sha256)),
            encryption: header.encryption,
            attempt: 1,
        }
    }

    /// The shape of this message's chunk payload for a model of `input_columns` columns.
    pub fn shape(&self, input_columns: u32) -> crate::format::ChunkShape {
        crate::format::ChunkShape {
            input_columns,
            records_per_chunk: self.records_per_chunk(),
            encryption: self.encryption,
        }
    }

    /// The message for attempt `attempt` of its job.
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The binding of this chunk's result: its job and batch (when the message names the
    /// batch header's hash).
    pub fn result_binding(&self) -> Option<crate::format::ResultBinding> {
        let mut h = [0u8; 32];
        hex::decode_to_slice(self.batch_header_sha256.as_deref()?, &mut h).ok()?;
        Some(crate::format::ResultBinding::new(&self.job, h))
    }

    /// Records per chunk of this message's batch.
    pub fn records_per_chunk(&self) -> u32 {
        self.records_per_chunk
            .unwrap_or(self.params.polynomial_size() as u32)
    }

    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("message serializes")
    }

    pub fn parse(body: &str) -> Result<Self, MessageError> {
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(MessageError(format!(
                "{} bytes (limit {MAX_MESSAGE_BYTES})",
                body.len()
            )));
        }
        let m: ChunkMessage =
            serde_json::from_str(body).map_err(|e| MessageError(e.to_string()))?;
        if m.v != JOB_FORMAT_VERSION {
            return Err(MessageError(format!("version {}", m.v)));
        }
        if m.attempt == 0 {
            return Err(MessageError("attempt 0".into()));
        }
        if m.chunk >= m.chunk_count {
            return Err(MessageError(format!(
                "chunk {} of {}",
                m.chunk, m.chunk_count
            )));
        }
        let tenancy = crate::layout::Tenancy::of_job(&m.job);
        if crate::layout::job_for_upload_in(&m.batch_key, tenancy).map(|(job, _)| job)
            != Ok(m.job.clone())
        {
            return Err(MessageError(format!(
                "batch key {:?} does not belong to job {}",
                m.batch_key, m.job
            )));
        }
        m.sha256_bytes()?;
        if m.batch_header_sha256
            .as_deref()
            .is_some_and(|h| h.len() != 64 || hex::decode(h).is_err())
        {
            return Err(MessageError(
                "batch header hash is not 64 hex digits".into(),
            ));
        }
        if m.records_per_chunk
            .is_some_and(|s| s == 0 || s as usize > m.params.polynomial_size())
        {
            return Err(MessageError(format!(
                "{:?} records per chunk",
                m.records_per_chunk
            )));
        }
        if m.records == 0
            || m.records > m.records_per_chunk()
            || m.offset.checked_add(m.length).is_none()
        {
            return Err(MessageError(format!(
                "chunk {} describes {} records at {}+{} bytes",
                m.chunk, m.records, m.offset, m.length
            )));
        }
        Ok(m)
    }

    pub fn sha256_bytes(&self) -> Result<[u8; 32], MessageError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.sha256, &mut out)
            .map_err(|_| MessageError("sha256 is not 64 hex digits".into()))?;
        Ok(out)
    }
}

/// What kind of failure a failure record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The uploaded batch was refused at ingest.
    InvalidBatch,
    /// A chunk's bytes are damaged or do not match the model.
    InvalidChunk,
    /// The model named by the batch could not be used.
    Model,
    /// A chunk kept failing for a transient reason until its retries ran out.
    RetriesExhausted,
    /// The evaluator failed in an unexpected way (a bug); contained to this chunk.
    Internal,
    /// No attempt at the chunk ever finished (the worker function timed out, ran out of memory
    /// or was throttled), so nothing was recorded until its message reached the dead-letter
    /// queue.
    WorkerLost,
}

/// `jobs/<job>/failed.json` or `jobs/<job>/errors/<chunk>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub chunk: Option<u32>,
    pub kind: FailureKind,
    pub reason: String,
    pub at_unix_ms: u64,
    /// A batch refused at ingest: the upload, as `<size>:<SHA-256 of the bytes ingest read>`
    /// (the header, or as much of it as was readable), so a repeated event of the same upload
    /// is told from a new one. Absent in chunk records and in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<String>,
}

/// The message published once when a job ends (SUCCEEDED or FAILED), as SageMaker
/// Asynchronous Inference notifies: the job, its state, its counts, where its results are, and
/// the first failure's reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobNotification {
    pub job: JobId,
    /// The attempt that ended (one notification per attempt).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    pub state: JobState,
    pub chunks_total: u32,
    pub chunks_done: u32,
    pub chunks_failed: u32,
    pub records: u64,
    pub results_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at_unix_ms: u64,
}

/// The state of a job, derived from the objects in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Queued => "QUEUED",
            JobState::Running => "RUNNING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
        })
    }
}

/// A job's status as the status function reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub job: JobId,
    /// The job's current attempt (1 unless it was retried or re-uploaded); the state, counts
    /// and failures are this attempt's.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    pub state: JobState,
    pub chunks_done: u32,
    pub chunks_total: u32,
    pub chunks_failed: u32,
    pub records: u64,
    pub model_id: Option<ModelId>,
    pub created_unix_ms: Option<u64>,
    pub failures: Vec<FailureRecord>,
    /// Where the chunk results are (`results/<job>/`).
    pub results_prefix: String,
    /// Uploads under this job's name that were refused (a different batch while the job
    /// existed), with what to do instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_uploads: Vec<String>,
}

impl JobStatus {
    /// The current attempt's batch was refused at ingest (FAILED with no chunks): a corrected
    /// upload under the same name runs as the next attempt.
    pub fn rejected_at_ingest(&self) -> bool {
        self.state == JobState::Failed && self.chunks_total == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message queued before attempts existed (no `attempt` field) is attempt 1, and an
    /// attempt-1 message is written without the field, so older workers still read it.
    #[test]
    fn messages_without_an_attempt_are_attempt_one() {
        let old = r#"{"v":1,"job":"claims","batch_key":"inbox/claims.fheb","chunk":0,"chunk_count":1,"offset":100,"length":200,"records":3,"first_record":0,"sha256":"0000000000000000000000000000000000000000000000000000000000000000","model_id":"00000000000000000000000000000000","key_fingerprint":"00000000000000000000000000000000","params":"glwe-2048-tuniform17-v1"}"#;
        let m = ChunkMessage::parse(old).expect("a message of the previous version parses");
        assert_eq!(m.attempt, 1);
        assert!(!m.to_body().contains("attempt"));
        let second = m.clone().with_attempt(2);
        let body = second.to_body();
        assert!(body.contains(r#""attempt":2"#), "{body}");
        assert_eq!(ChunkMessage::parse(&body).unwrap().attempt, 2);
        let zero = body.replace(r#""attempt":2"#, r#""attempt":0"#);
        assert!(ChunkMessage::parse(&zero).is_err());
    }

    /// Records written before attempts existed still read.
    #[test]
    fn old_records_read() {
        let failure: FailureRecord = serde_json::from_str(
            r#"{"chunk":null,"kind":"invalid_batch","reason":"invalid batch","at_unix_ms":1}"#,
        )
        .unwrap();
        assert_eq!(failure.upload, None);
        let status: JobStatus = serde_json::from_str(
            r#"{"job":"claims","state":"FAILED","chunks_done":0,"chunks_total":0,"chunks_failed":0,"records":0,"model_id":null,"created_unix_ms":null,"failures":[],"results_prefix":"results/claims/"}"#,
        )
        .unwrap();
        assert_eq!(status.attempt, 1);
        assert!(status.rejected_at_ingest());
    }
}
