//! `fhe-batch worker`: queue workers outside Lambda, polling SQS and writing chunk results to
//! S3 as the worker function does (the logic is in [`crate::remote`]).

use super::common::runtime;
use crate::remote;
use anyhow::Result;
use std::time::Duration;

/// Run queue workers outside Lambda (a VM, a container, a local stack): poll the jobs queue
/// (SQS) and write chunk results to the bucket, as the worker function does. Prints one
/// JSON line per handled message.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// Concurrent workers in this process.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// The queue's dead-letter limit (maxReceiveCount of its redrive policy).
    #[arg(long, default_value_t = 5)]
    max_receives: u32,
    /// Stop after this many idle seconds (default: run until killed).
    #[arg(long)]
    idle_exit_secs: Option<u64>,
    #[command(flatten)]
    remote: remote::RemoteArgs,
}

pub fn run(args: WorkerArgs) -> Result<()> {
    runtime()?.block_on(remote::worker(
        &args.remote,
        args.concurrency,
        args.max_receives,
        args.idle_exit_secs.map(Duration::from_secs),
    ))
}
