//! `fhe-batch run`: the embedded local pipeline on the local bucket (ingest every batch in
//! inbox/, then evaluate every queued chunk with a pool of workers in this process).

use super::common::{StoreArg, runtime};
use crate::{local, output};
use anyhow::{Result, bail};
use fhe_batch_core::pipeline::IngestOutcome;
use fhe_batch_local::FsStore;

/// Run the local pipeline: ingest every batch in inbox/ and evaluate all queued chunks.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Concurrent workers.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    #[command(flatten)]
    store: StoreArg,
}

pub fn run(args: RunArgs) -> Result<()> {
    if args.store.bucket.is_some() {
        bail!("`run` drives the local pipeline; on AWS the deployed functions do this work");
    }
    let s = FsStore::open(&args.store.store)?;
    let report = runtime()?.block_on(local::run_local(&s, args.workers, true))?;
    for o in &report.ingested {
        match o {
            IngestOutcome::Queued { job, chunks } => {
                println!("job {job}: queued {chunks} chunks")
            }
            IngestOutcome::Requeued { job, chunks } => {
                println!("job {job}: already ingested; re-queued {chunks} unfinished chunks")
            }
            IngestOutcome::Resubmitted {
                job,
                attempt,
                chunks,
            } => println!(
                "job {job}: attempt {attempt} (the earlier upload was refused at ingest): queued {chunks} chunks"
            ),
            IngestOutcome::Rejected {
                job,
                attempt: 1,
                reason,
            } => println!("job {job}: FAILED: {reason}"),
            IngestOutcome::Rejected {
                job,
                attempt,
                reason,
            } => println!("job {job}: attempt {attempt} FAILED: {reason}"),
            IngestOutcome::Refused { job, reason } => {
                println!("job {job}: upload refused: {reason}")
            }
            IngestOutcome::Ignored { .. } => {}
        }
    }
    print_work(&report);
    Ok(())
}

/// What the workers did, and the job-end notifications of the run.
pub fn print_work(report: &local::RunReport) {
    println!(
        "{} chunk results written, {} already done, {} failed, in {}",
        report.written,
        report.duplicates,
        report.failed,
        output::dur(report.work_time)
    );
    for n in &report.notifications {
        println!(
            "notification: job {}{} {} ({}/{} chunks, {} records){}",
            n.job,
            if n.attempt > 1 {
                format!(" attempt {}", n.attempt)
            } else {
                String::new()
            },
            n.state,
            n.chunks_done,
            n.chunks_total,
            n.records,
            n.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_else(|| format!("; results in {}", n.results_prefix))
        );
    }
}
