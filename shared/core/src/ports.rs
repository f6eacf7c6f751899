//! Ports: the capabilities the pipeline needs from its environment.
//!
//! - [`ObjectStore`] and [`JobQueue`]: storage and messaging. The AWS adapters (S3, SQS) and
//!   the embedded adapters (a directory, an in-process queue) both implement them;
//! - [`ChunkEvaluator`]: the FHE side of the worker (implemented in `fhe-batch-fhe`), with the
//!   types it exchanges ([`ChunkInput`], [`EvalError`], [`KeyFetch`], [`KeyLoadError`]).

use crate::ids::{EvalKeyId, KeyFingerprint};
use crate::model::ServerModel;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// A storage failure. `NotFound` is a normal answer; the others say whether a retry may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("object {key} does not exist")]
    NotFound { key: String },
    #[error("object key {key:?} is not allowed: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("object {key} is {size} bytes, more than the {limit} bytes allowed here")]
    TooLarge { key: String, size: u64, limit: u64 },
    #[error("range {start}+{len} is outside object {key} ({size} bytes)")]
    Range {
        key: String,
        start: u64,
        len: u64,
        size: u64,
    },
    #[error("storage error on {key}: {message}")]
    Backend {
        key: String,
        message: String,
        retryable: bool,
    },
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Backend {
                retryable: true,
                ..
            }
        )
    }
}

/// Result of a create-only write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// The object already existed; nothing was written (S3: 412 on `If-None-Match: *`).
    AlreadyExists,
}

/// An object store with strong read-after-write consistency (S3's model).
pub trait ObjectStore: Send + Sync {
    /// Reads a whole object, refusing objects larger than `max_bytes` without reading them.
    fn get(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;
    /// Reads `len` bytes at `start` (an HTTP range request on S3).
    fn get_range(
        &self,
        key: &str,
        start: u64,
        len: u64,
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;
    /// Object size, or `None` when it does not exist.
    fn size(&self, key: &str) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;
    /// Writes an object, replacing any previous one.
    fn put(&self, key: &str, bytes: Vec<u8>)
    -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Writes an object only if no object has that key; atomic.
    fn put_if_absent(
        &self,
        key: &str,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<PutOutcome, StoreError>> + Send;
    /// Every key starting with `prefix`, sorted.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
}

/// A queue failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("message of {size} bytes exceeds the queue's {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("receipt {0:?} is unknown or expired")]
    UnknownReceipt(String),
    #[error("queue error: {message}")]
    Backend { message: String, retryable: bool },
}

/// One delivery of a message. The same message may be delivered again (at least once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message_id: String,
    /// Names this delivery; only the latest delivery's receipt can acknowledge the message.
    pub receipt: String,
    pub body: String,
    /// 1 on the first delivery.
    pub receive_count: u32,
}

/// A notification could not be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("notification not published: {0}")]
pub struct NotifyError(pub String);

/// Where job-end notifications go (SNS topics on AWS; a log, or nowhere, locally). Object safe,
/// so a worker can hold one of any kind.
pub trait Notifier: Send + Sync {
    /// Publishes one job's end: to the success topic when it SUCCEEDED, else to the error
    /// topic.
    fn publish<'a>(
        &'a self,
        notification: &'a crate::job::JobNotification,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), NotifyError>> + Send + 'a>>;

    /// The channels a notification goes to, in publishing order (a notifier that fans out to
    /// SNS and EventBridge names both). A publish that failed part-way is retried on the
    /// channels that do not have it yet, so each channel gets a job's end once.
    fn channels(&self) -> Vec<&'static str> {
        vec!["default"]
    }

    /// Publishes to one of [`Notifier::channels`]; a notifier with one channel publishes.
    fn publish_to<'a>(
        &'a self,
        channel: &'a str,
        notification: &'a crate::job::JobNotification,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), NotifyError>> + Send + 'a>> {
        let _ = channel;
        self.publish(notification)
    }
}

/// An at-least-once message queue with visibility timeouts and a dead-letter limit (SQS's model).
pub trait JobQueue: Send + Sync {
    /// Sends messages (the adapter batches them as the service allows).
    fn send_batch(
        &self,
        bodies: Vec<String>,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Receives up to `max` messages, hiding them for the queue's visibility timeout; waits up to
    /// `wait` for one to arrive.
    fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Delivery>, QueueError>> + Send;
    /// Deletes a delivered message: its work is done.
    fn ack(&self, receipt: &str) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Hides a delivered message for `timeout` from now (SQS `ChangeMessageVisibility`): a
    /// worker extends it while a long chunk runs, and a failed attempt sets when it is tried
    /// again. Only the latest delivery's receipt may do so.
    fn change_visibility(
        &self,
        receipt: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// A chunk evaluation that can never succeed (damaged payload, model mismatch).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

/// One chunk to evaluate.
#[derive(Debug, Clone, Copy)]
pub struct ChunkInput<'a> {
    pub payload: &'a [u8],
    /// Records in this chunk, and records per chunk of its batch (the payload's column width).
    pub records: u32,
    pub records_per_chunk: u32,
    /// The evaluation key the chunk's model needs, installed beforehand.
    pub eval_key: Option<&'a EvalKeyId>,
    /// How the chunk was encrypted (it decides the payload's layout).
    pub encryption: crate::params::Encryption,
}

impl ChunkInput<'_> {
    /// The shape of this chunk's payload for a model of `input_columns` columns.
    pub fn shape(&self, input_columns: u32) -> crate::format::ChunkShape {
        crate::format::ChunkShape {
            input_columns,
            records_per_chunk: self.records_per_chunk,
            encryption: self.encryption,
        }
    }
}

/// Largest evaluation key file a worker downloads.
pub const MAX_EVAL_KEY_BYTES: u64 = 256 << 20;

/// Why an evaluation key could not be made ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyLoadError {
    /// Its download failed (`NotFound`: it was never uploaded).
    #[error(transparent)]
    Fetch(StoreError),
    /// Its bytes can never be used (hash, size, version or parameter check).
    #[error(transparent)]
    Unusable(EvalError),
    /// Loading it panicked.
    #[error("loading panicked")]
    Panicked,
}

/// The FHE side of the worker: turns a chunk payload into result ciphertexts.
pub trait ChunkEvaluator: Send + Sync {
    /// Evaluates `model` on one chunk; returns the result body
    /// (`model.output_ciphertexts(records, n)` GLWE ciphertexts, as
    /// [`ResultHeader::encode`](crate::format::ResultHeader::encode) expects).
    fn evaluate(&self, model: &ServerModel, chunk: &ChunkInput<'_>) -> Result<Vec<u8>, EvalError>;

    /// Whether evaluation key `id` is ready (already loaded, or in a local cache).
    fn has_eval_key(&self, _id: &EvalKeyId) -> bool {
        false
    }

    /// The fingerprint of the secret key a loaded evaluation key belongs to, when known.
    fn eval_key_owner(&self, _id: &EvalKeyId) -> Option<KeyFingerprint> {
        None
    }

    /// Loads an evaluation key from its uploaded bytes (checked against `id`, deserialized
    /// with size and parameter checks). An `Err` means the key can never be used.
    fn install_eval_key(&self, id: &EvalKeyId, _bytes: Vec<u8>) -> Result<(), EvalError> {
        Err(EvalError(format!(
            "this worker cannot evaluate models that need an evaluation key ({id})"
        )))
    }

    /// Makes evaluation key `id` ready, awaiting `fetch` (the download of its uploaded bytes)
    /// only when no cache has it. The default checks [`has_eval_key`](Self::has_eval_key),
    /// then downloads and [installs](Self::install_eval_key) the key; an evaluator that keeps
    /// keys may instead share one download among concurrent callers.
    fn prepare_eval_key<'a>(
        &'a self,
        id: &'a EvalKeyId,
        fetch: KeyFetch<'a>,
    ) -> impl Future<Output = Result<(), KeyLoadError>> + Send + 'a {
        async move {
            if self.has_eval_key(id) {
                return Ok(());
            }
            fetch_and_install(id, fetch, |bytes| self.install_eval_key(id, bytes)).await
        }
    }
}

/// The download of an evaluation key's bytes (a future that does nothing until awaited).
pub type KeyFetch<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, StoreError>> + Send + 'a>>;

/// Downloads an evaluation key with `fetch` and hands it to `install` (a panic there is
/// caught), logging the time each step took.
pub async fn fetch_and_install<T>(
    id: &EvalKeyId,
    fetch: impl Future<Output = Result<Vec<u8>, StoreError>>,
    install: impl FnOnce(Vec<u8>) -> Result<T, EvalError>,
) -> Result<T, KeyLoadError> {
    let started = Instant::now();
    let bytes = fetch.await.map_err(KeyLoadError::Fetch)?;
    let fetched = started.elapsed();
    let len = bytes.len();
    let installed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| install(bytes)));
    match installed {
        Ok(Ok(key)) => {
            tracing::info!(
                key = %id,
                bytes = len,
                fetch_ms = fetched.as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "evaluation key loaded"
            );
            Ok(key)
        }
        Ok(Err(e)) => Err(KeyLoadError::Unusable(e)),
        Err(_) => Err(KeyLoadError::Panicked),
    }
}

impl<T: Notifier + ?Sized> Notifier for std::sync::Arc<T> {
    fn publish<'a>(
        &'a self,
        notification: &'a crate::job::JobNotification,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), NotifyError>> + Send + 'a>> {
        (**self).publish(notification)
    }

    fn channels(&self) -> Vec<&'static str> {
        (**self).channels()
    }

    fn publish_to<'a>(
        &'a self,
        channel: &'a str,
        notification: &'a crate::job::JobNotification,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), NotifyError>> + Send + 'a>> {
        (**self).publish_to(channel, notification)
    }
}
