//! `fhe-batch retry`: a FAILED job's next attempt, its unfinished chunks queued again.

use super::common::{StoreArg, job_arg, runtime};
use crate::{local, output};
use anyhow::{Context, Result};
use fhe_batch_aws::{S3Store, SqsQueue};
use fhe_batch_core::pipeline::{RetryOutcome, job_status, retry_job};
use fhe_batch_core::retry::{RetryPolicy, Retrying};
use fhe_batch_local::FsStore;

/// Run a FAILED job again as its next attempt: the chunks without a result are queued again
/// (the same batch, so the results already written stay), and the attempt starts with no
/// failures. Refused unless the job FAILED after its batch ran; a batch refused at ingest is
/// corrected by uploading it again under the same name. On the local bucket the chunks run
/// now, in this process; with --bucket they are sent to the jobs queue for the workers.
#[derive(clap::Args, Debug)]
pub struct RetryArgs {
    job: String,
    /// Concurrent workers (local bucket).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// With --bucket: the jobs queue URL (the stack's JobsQueueUrl output).
    #[arg(long, env = "JOBS_QUEUE_URL")]
    queue_url: Option<String>,
    #[command(flatten)]
    store: StoreArg,
}

pub fn run(args: RetryArgs) -> Result<()> {
    let job = job_arg(&args.job)?;
    let rt = runtime()?;
    match &args.store.bucket {
        Some(bucket) => {
            let url = args.queue_url.as_deref().context(
                "--bucket needs --queue-url (or JOBS_QUEUE_URL): the stack's JobsQueueUrl output, where the chunks are sent",
            )?;
            rt.block_on(async {
                let (s3, sqs) = fhe_batch_aws::config::clients().await;
                let store = Retrying::new(S3Store::new(s3, bucket), RetryPolicy::default());
                let queue = Retrying::new(SqsQueue::new(sqs, url), RetryPolicy::default());
                let outcome = retry_job(&store, &queue, &job).await?;
                print_outcome(&outcome);
                println!(
                    "the workers pick them up: `fhe-batch status {job} --bucket {bucket} --wait`"
                );
                anyhow::Ok(())
            })
        }
        None => {
            let store = FsStore::open(&args.store.store)
                .with_context(|| format!("opening {}", args.store.store.display()))?;
            rt.block_on(async {
                let queue = local::local_queue();
                let outcome = retry_job(&store, &queue, &job).await?;
                print_outcome(&outcome);
                let mut report = local::RunReport::default();
                local::work(&store, &queue, args.workers, true, &mut report).await?;
                super::run::print_work(&report);
                println!("{}", output::status_line(&job_status(&store, &job).await?));
                anyhow::Ok(())
            })
        }
    }
}

fn print_outcome(o: &RetryOutcome) {
    println!(
        "job {}: attempt {}: queued {} unfinished chunks again ({} of {} kept their results)",
        o.job, o.attempt, o.chunks_queued, o.chunks_kept, o.chunks_total
    );
    for f in &o.retried_failures {
        match f.chunk {
            Some(c) => println!("  attempt {} chunk {c}: {}", o.attempt - 1, f.reason),
            None => println!("  attempt {}: {}", o.attempt - 1, f.reason),
        }
    }
}
