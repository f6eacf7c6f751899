//! `fhe-batch ingest` and `fhe-batch worker`: the ingest and worker functions' logic run as
//! ordinary processes against an S3 bucket and an SQS queue (a VM, a container, or a local
//! endpoint such as moto), with the same bounded retries as the Lambda functions.

use anyhow::{Result, bail};
use fhe_batch_aws::{S3Store, SqsQueue};
use fhe_batch_core::format::BatchLimits;
use fhe_batch_core::layout;
use fhe_batch_core::pipeline::{
    ChunkOutcome, LoopConfig, Worker, WorkerConfig, ingest_object, run_queue_worker,
};
use fhe_batch_core::ports::ObjectStore;
use fhe_batch_core::retry::{RetryPolicy, Retrying};
use fhe_batch_fhe::FheEvaluator;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct RemoteArgs {
    /// The S3 bucket (the stack's BucketName output).
    #[arg(long, env = "FHE_BATCH_BUCKET")]
    pub bucket: String,
    /// The jobs queue URL (the stack's JobsQueueUrl output).
    #[arg(long, env = "JOBS_QUEUE_URL")]
    pub queue_url: String,
}

async fn connect(args: &RemoteArgs) -> (Retrying<S3Store>, Retrying<SqsQueue>) {
    let (s3, sqs) = fhe_batch_aws::config::clients().await;
    (
        Retrying::new(S3Store::new(s3, &args.bucket), RetryPolicy::default()),
        Retrying::new(SqsQueue::new(sqs, &args.queue_url), RetryPolicy::default()),
    )
}

pub async fn ingest(args: &RemoteArgs, mut keys: Vec<String>) -> Result<()> {
    let (store, queue) = connect(args).await;
    if keys.is_empty() {
        keys = store.list(layout::INBOX_PREFIX).await?;
    }
    let mut failed = 0;
    for key in keys {
        match ingest_object(&store, &queue, &key, &BatchLimits::default()).await {
            Ok(outcome) => println!("{}", outcome.to_json()),
            Err(e) => {
                eprintln!("error: {key}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} objects could not be ingested (storage or queue errors); run again");
    }
    Ok(())
}

pub async fn worker(
    args: &RemoteArgs,
    concurrency: usize,
    max_receives: u32,
    idle_exit: Option<Duration>,
) -> Result<()> {
    let (store, queue) = connect(args).await;
    let worker = Arc::new(Worker::new(
        store,
        FheEvaluator::default(),
        WorkerConfig { max_receives },
    ));
    let started = Instant::now();
    // Milliseconds since `started` of the last handled message.
    let last_busy = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (worker, queue, last_busy) = (worker.clone(), queue.clone(), last_busy.clone());
        tasks.push(tokio::spawn(async move {
            let stop = || {
                idle_exit.is_some_and(|limit| {
                    let idle =
                        started.elapsed().as_millis() as u64 - last_busy.load(Ordering::Relaxed);
                    Duration::from_millis(idle) >= limit
                })
            };
            run_queue_worker(
                &worker,
                &queue,
                &LoopConfig::default(),
                stop,
                |outcome, delivery| {
                    last_busy.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    print_outcome(outcome, delivery.receive_count);
                },
            )
            .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn print_outcome(outcome: &ChunkOutcome, receive_count: u32) {
    let (job, chunk) = outcome.chunk();
    let kind = match outcome {
        ChunkOutcome::Written { .. } => "written",
        ChunkOutcome::AlreadyDone { .. } => "already_done",
        ChunkOutcome::Skipped { .. } => "skipped",
        ChunkOutcome::Stale { .. } => "stale",
        ChunkOutcome::Failed { .. } => "failed",
    };
    let line = serde_json::json!({
        "outcome": kind,
        "job": job.map(|j| j.as_str()),
        "chunk": chunk,
        "receive_count": receive_count,
        "pid": std::process::id(),
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
