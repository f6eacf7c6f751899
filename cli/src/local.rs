//! The embedded default pipeline: a directory as the bucket, an in-process queue, ingest and
//! several workers in this process.

use anyhow::Result;
use fhe_batch_core::format::BatchLimits;
use fhe_batch_core::layout;
use fhe_batch_core::pipeline::{
    ChunkOutcome, IngestOutcome, LoopConfig, Worker, WorkerConfig, ingest_object,
    record_dead_letter, run_queue_worker,
};
use fhe_batch_core::ports::ObjectStore;
use fhe_batch_fhe::FheEvaluator;
use fhe_batch_local::{FsStore, MemQueue, MemQueueConfig};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a local run did.
#[derive(Debug, Default)]
pub struct RunReport {
    pub ingested: Vec<IngestOutcome>,
    pub written: u64,
    pub duplicates: u64,
    pub failed: u64,
    pub dead_letters: usize,
    /// Job-end notifications, one per job that ended in this run (as SNS would carry them).
    pub notifications: Vec<fhe_batch_core::job::JobNotification>,
    pub ingest_time: Duration,
    pub work_time: Duration,
}

pub fn bar(len: u64, what: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("  {msg:<10} [{bar:32}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Ingests every batch in `inbox/` and runs `workers` workers until the queue is drained.
pub async fn run_local(store: &FsStore, workers: usize, show_progress: bool) -> Result<RunReport> {
    let queue = local_queue();
    let mut report = RunReport::default();
    let started = Instant::now();
    for key in store.list(layout::INBOX_PREFIX).await? {
        let outcome = ingest_object(store, &queue, &key, &BatchLimits::default()).await?;
        report.ingested.push(outcome);
    }
    report.ingest_time = started.elapsed();
    work(store, &queue, workers, show_progress, &mut report).await?;
    Ok(report)
}

/// Runs `workers` workers on `queue` until it is drained, then records its dead letters and
/// publishes the job ends (as SNS would carry them) into `report`.
pub async fn work(
    store: &FsStore,
    queue: &MemQueue,
    workers: usize,
    show_progress: bool,
    report: &mut RunReport,
) -> Result<()> {
    let total = queue.stats().sent;
    let pb = bar(total, "evaluate", show_progress);
    let notes = Arc::new(fhe_batch_core::pipeline::CollectingNotifier::default());
    let worker = Arc::new(
        Worker::new(
            store.clone(),
            FheEvaluator::default(),
            WorkerConfig { max_receives: 5 },
        )
        .with_notifier(notes.clone()),
    );
    let counters = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..workers.max(1) {
        let (worker, queue, counters, pb) =
            (worker.clone(), queue.clone(), counters.clone(), pb.clone());
        handles.push(tokio::spawn(async move {
            let idle = queue.clone();
            let config = LoopConfig::for_visibility(queue.visibility_timeout());
            run_queue_worker(
                &worker,
                &queue,
                &config,
                || idle.is_idle(),
                |o, _| {
                    let i = match o {
                        ChunkOutcome::Written { .. } => 0,
                        ChunkOutcome::AlreadyDone { .. }
                        | ChunkOutcome::Skipped { .. }
                        | ChunkOutcome::Stale { .. } => 1,
                        ChunkOutcome::Failed { .. } => 2,
                    };
                    counters[i].fetch_add(1, Ordering::Relaxed);
                    pb.inc(1);
                },
            )
            .await
        }));
    }
    for h in handles {
        h.await??;
    }
    pb.finish_and_clear();
    report.work_time = started.elapsed();
    report.written = counters[0].load(Ordering::Relaxed);
    report.duplicates = counters[1].load(Ordering::Relaxed);
    report.failed = counters[2].load(Ordering::Relaxed);
    // As the dead-letter function does on AWS: a chunk that never finished fails its job.
    let dead = queue.dead_letters();
    for body in &dead {
        record_dead_letter(store, body, 5).await?;
    }
    report.dead_letters = dead.len();
    // Refused batches and dead letters end their jobs too.
    fhe_batch_aws::handlers::notify_refused(store, notes.as_ref(), &report.ingested).await?;
    for body in &dead {
        if let Ok(msg) = fhe_batch_core::job::ChunkMessage::parse(body) {
            let me = fhe_batch_core::pipeline::Claimant::Chunk(msg.chunk);
            fhe_batch_core::pipeline::notify_attempt_if_ended(
                store,
                notes.as_ref(),
                &msg.job,
                Some(msg.attempt),
                me,
            )
            .await?;
        }
    }
    report.notifications = notes.take();
    Ok(())
}

/// The in-process queue of the local pipeline.
pub fn local_queue() -> MemQueue {
    MemQueue::new(MemQueueConfig {
        visibility_timeout: Duration::from_secs(60),
        max_receives: 5,
    })
}
