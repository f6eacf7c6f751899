//! `fhe-batch ingest`: what the ingest function does on an S3 event, run by hand against an
//! S3 bucket and an SQS queue (the logic is in [`crate::remote`]).

use super::common::runtime;
use crate::remote;
use anyhow::Result;

/// Ingest uploaded batches into the jobs queue, as the ingest function does on an S3 event
/// (for a stack without S3 notifications, such as a local endpoint).
#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    /// Object keys (inbox/JOB.fheb); all of inbox/ when none is given.
    keys: Vec<String>,
    #[command(flatten)]
    remote: remote::RemoteArgs,
}

pub fn run(args: IngestArgs) -> Result<()> {
    runtime()?.block_on(remote::ingest(&args.remote, args.keys))
}
