//! The permissions each function needs, recorded from the code rather than assumed: every
//! store call the ingest, worker and status logic makes is recorded as the IAM action it needs
//! and the key prefix it touches, over scenarios that reach every path (new batch, repeated
//! event, rejected batch, tree batch with its evaluation key, successful, duplicate and failed
//! chunks, status of unknown, uploaded, running, finished and failed jobs, a corrected upload
//! of a refused batch, a retried job's next attempt and its earlier attempt's dead letters). The
//! result must
//! equal `tests/fixtures/permissions.json`, and `infra/check_template.py` checks that
//! `template.yaml` grants each function exactly that. moto does not enforce IAM, so without this
//! a missing grant would only show on AWS (as the status function's 403 on `inbox/` once did).

use crate::common::*;
use crate::trees::{batch, key_id, tree};
use fhe_batch_core::format::{BatchLimits, ChunkLayout};
use fhe_batch_core::ids::JobId;
use fhe_batch_core::layout;
use fhe_batch_core::pipeline::{
    ChunkOutcome, IngestOutcome, StatusError, Worker, WorkerConfig, ingest_object, job_status,
    list_jobs, retry_job,
};
use fhe_batch_core::ports::{ObjectStore, PutOutcome, StoreError};
use fhe_batch_fhe::FheEvaluator;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The chunk messages the worker scenario saw, replayed as dead letters.
static BODIES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// `(IAM action, key prefix)`; the prefix is the key's first segment with its slash, or `""`
/// for the bucket itself (`s3:ListBucket`).
type Grant = (String, String);

/// A store that records the grants its calls need.
#[derive(Clone)]
struct Recording<S> {
    inner: S,
    seen: Arc<Mutex<BTreeSet<Grant>>>,
}

impl<S> Recording<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            seen: Arc::default(),
        }
    }

    fn note(&self, action: &str, key: &str) {
        let prefix = match key.split_once('/') {
            Some((first, _)) => format!("{first}/"),
            None => String::new(),
        };
        let mut seen = self.seen.lock().unwrap();
        seen.insert((action.to_string(), prefix));
    }

    /// A read that may meet a missing object also needs `s3:ListBucket`: without it S3 answers
    /// 403 instead of 404, and a missing object would read as "storage unavailable".
    fn note_read(&self, key: &str) {
        self.note("s3:GetObject", key);
        self.note("s3:ListBucket", "");
    }

    fn grants(&self) -> BTreeSet<Grant> {
        self.seen.lock().unwrap().clone()
    }
}

impl<S: ObjectStore> ObjectStore for Recording<S> {
    async fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, StoreError> {
        self.note_read(key);
        self.inner.get(key, max).await
    }
    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.note("s3:GetObject", key);
        self.inner.get_range(key, start, len).await
    }
    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.note_read(key);
        self.inner.size(key).await
    }
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.note("s3:PutObject", key);
        self.inner.put(key, bytes).await
    }
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        self.note("s3:PutObject", key);
        self.inner.put_if_absent(key, bytes).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.note("s3:ListBucket", "");
        self.inner.list(prefix).await
    }
}

/// Ingest: a new batch, the same event again, a damaged batch, a tree batch naming its key, and
/// a refused batch corrected by a new upload (its next attempt).
async fn ingest_grants(env: &Env, q: &fhe_batch_local::MemQueue) -> BTreeSet<Grant> {
    let store = Recording::new(env.store.clone());
    let limits = BatchLimits::default();
    let notes = Notifications::default();
    for job in [
        "perm-linear",
        "perm-linear",
        "perm-bad",
        "perm-tree",
        "perm-fixed",
    ] {
        let job = JobId::parse(job).unwrap();
        let out = ingest_object(&store, q, &layout::inbox(&job), &limits)
            .await
            .unwrap();
        let rejected = matches!(out, IngestOutcome::Rejected { .. });
        assert_eq!(
            rejected,
            matches!(job.as_str(), "perm-bad" | "perm-fixed"),
            "{job}: {out:?}"
        );
        // A refused batch ends its job: the ingest function publishes that.
        fhe_batch_aws::handlers::notify_refused(&store, &notes, &[out])
            .await
            .unwrap();
    }
    assert_eq!(notes.sent().len(), 2);
    let fixed = env.upload("perm-fixed", iris_batch(100, 9).0).await;
    let out = ingest_object(&store, q, &layout::inbox(&fixed), &limits)
        .await
        .unwrap();
    assert!(
        matches!(out, IngestOutcome::Resubmitted { attempt: 2, .. }),
        "{out:?}"
    );
    store.grants()
}

/// Worker: every chunk of the linear and tree jobs (one of them damaged after ingest, so its
/// failure is recorded), then every message delivered again (answered from the results).
async fn worker_grants(env: &Env, q: &fhe_batch_local::MemQueue) -> BTreeSet<Grant> {
    let store = Recording::new(env.store.clone());
    let notes = Arc::new(Notifications::default());
    let worker = Arc::new(
        Worker::new(
            store.clone(),
            FheEvaluator::new(None),
            WorkerConfig { max_receives: 5 },
        )
        .with_notifier(notes.clone()),
    );
    let deliveries = receive_all(q).await;
    assert!(deliveries.len() >= 4, "{} messages", deliveries.len());
    *BODIES.lock().unwrap() = deliveries.iter().map(|d| d.body.clone()).collect();
    for d in deliveries.iter().chain(&deliveries) {
        worker
            .handle_message(&d.body, d.receive_count)
            .await
            .unwrap();
    }
    assert!(!notes.sent().is_empty(), "job ends were published");
    store.grants()
}

/// The dead-letter handler: a chunk with a result, a chunk without one (recorded), and a body
/// that is not a chunk message.
async fn deadletter_grants(env: &Env, bodies: &[String]) -> BTreeSet<Grant> {
    let store = Recording::new(env.store.clone());
    let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
    for body in bodies.iter().cloned().chain(["not a chunk".to_string()]) {
        let mut m = aws_lambda_events::event::sqs::SqsMessage::default();
        m.message_id = Some("m".into());
        m.body = Some(body);
        event.records.push(m);
    }
    let notes = Notifications::default();
    let reply = fhe_batch_aws::handlers::handle_dead_letters(&store, Some(&notes), event).await;
    assert!(reply.batch_item_failures.is_empty());
    assert!(!notes.sent().is_empty(), "the lost job's end was published");
    store.grants()
}

/// Status: unknown, uploaded, finished, failed and partly failed jobs, and the job list.
async fn status_grants(env: &Env) -> BTreeSet<Grant> {
    let store = Recording::new(env.store.clone());
    let unknown = JobId::parse("perm-unknown").unwrap();
    assert!(matches!(
        job_status(&store, &unknown).await,
        Err(StatusError::NotFound(_))
    ));
    for job in [
        "perm-uploaded",
        "perm-linear",
        "perm-bad",
        "perm-tree",
        "perm-fixed",
    ] {
        job_status(&store, &JobId::parse(job).unwrap())
            .await
            .unwrap();
    }
    assert!(!list_jobs(&store).await.unwrap().is_empty());
    store.grants()
}

/// `{"function": [["action", "prefix"], ...], ...}`, one grant per line.
fn as_json(by_function: &BTreeMap<&str, BTreeSet<Grant>>) -> String {
    let functions: Vec<String> = by_function
        .iter()
        .map(|(f, grants)| {
            let lines: Vec<String> = grants
                .iter()
                .map(|(a, p)| format!("    [{a:?}, {p:?}]"))
                .collect();
            format!("  {f:?}: [\n{}\n  ]", lines.join(",\n"))
        })
        .collect();
    format!("{{\n{}\n}}\n", functions.join(",\n"))
}

#[tokio::test]
async fn each_function_needs_exactly_the_grants_the_template_is_checked_against() {
    let env = Env::new().await;
    let t = tree();
    publish(&env.store, &t.pkg).await;
    env.store
        .put(&layout::eval_key(&key_id()), t.key_bytes.clone())
        .await
        .unwrap();
    let (linear, _) = iris_batch(2100, 7);
    let mut damaged = linear.clone();
    damaged.truncate(damaged.len() - 10);
    env.upload("perm-linear", linear.clone()).await;
    env.upload("perm-bad", damaged.clone()).await;
    env.upload("perm-fixed", damaged).await;
    env.upload("perm-uploaded", linear.clone()).await;
    let layout = ChunkLayout {
        records_per_chunk: 16,
        eval_key: Some(key_id()),
        encryption: fhe_batch_core::params::Encryption::SecretKey,
    };
    env.upload("perm-tree", batch(layout)).await;
    let q = queue(Duration::from_secs(600));
    let ingest = ingest_grants(&env, &q).await;
    // Damage the second chunk of the linear batch after ingest: its failure is recorded.
    let mut corrupt = linear;
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    env.upload("perm-linear", corrupt).await;
    let worker = worker_grants(&env, &q).await;
    let status = status_grants(&env).await;
    // perm-linear FAILED (its damaged chunk) and is retried: its chunk runs as attempt 2 (and
    // fails again), and attempt 1's messages, dead-lettered below, are stale.
    let linear_job = JobId::parse("perm-linear").unwrap();
    let retried = queue(Duration::from_secs(600));
    let out = retry_job(&env.store, &retried, &linear_job).await.unwrap();
    assert_eq!((out.attempt, out.chunks_queued), (2, 1));
    let recording = Recording::new(env.store.clone());
    let second = Worker::new(
        recording.clone(),
        FheEvaluator::new(None),
        WorkerConfig { max_receives: 5 },
    )
    .with_notifier(Arc::new(Notifications::default()));
    for d in receive_all(&retried).await {
        let out = second.handle_message(&d.body, d.receive_count).await;
        assert!(matches!(out, Ok(ChunkOutcome::Failed { .. })), "{out:?}");
    }
    let worker: BTreeSet<Grant> = worker.union(&recording.grants()).cloned().collect();
    // A job whose chunk never finished: its message, dead-lettered, is recorded.
    let (lost, _) = iris_batch(100, 8);
    env.upload("perm-lost", lost).await;
    let lost_q = queue(Duration::from_secs(600));
    let job = JobId::parse("perm-lost").unwrap();
    env.ingest(&lost_q, &job).await;
    let mut bodies = BODIES.lock().unwrap().clone();
    bodies.extend(receive_all(&lost_q).await.into_iter().map(|d| d.body));
    let deadletter = deadletter_grants(&env, &bodies).await;
    let observed = as_json(&BTreeMap::from([
        ("deadletter", deadletter),
        ("ingest", ingest),
        ("worker", worker),
        ("status", status),
    ]));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/permissions.json");
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_str(&observed).expect("valid JSON");
    assert!(parsed.as_object().is_some_and(|m| m.len() == 4));
    assert_eq!(
        observed,
        expected,
        "the functions' store calls changed; update {} and template.yaml (this is what they need now)",
        path.display()
    );
}
