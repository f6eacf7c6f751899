//! `fhe-batch submit`: upload an encrypted batch to the bucket's inbox/, which starts a job.

use super::common::{StoreArg, job_arg, runtime};
use crate::output;
use anyhow::{Context, Result};
use fhe_batch_core::layout;
use fhe_batch_core::ports::ObjectStore;
use std::path::PathBuf;

/// Upload a batch to the bucket's inbox/ (what `aws s3 cp batch.fheb s3://BUCKET/inbox/` does).
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    batch: PathBuf,
    /// Job id (default: the file name without .fheb).
    #[arg(long)]
    job: Option<String>,
    #[command(flatten)]
    store: StoreArg,
}

pub fn run(args: SubmitArgs) -> Result<()> {
    let batch = &args.batch;
    let job = match &args.job {
        Some(j) => job_arg(j)?,
        None => {
            let stem = batch
                .file_stem()
                .and_then(|s| s.to_str())
                .context("batch file name")?;
            let (job, renamed) = fhe_batch_core::ids::JobId::from_file_name(stem);
            if renamed {
                eprintln!(
                    "note: {stem:?} is not a job id (letters, digits, '-' and '_'); submitting as job {job}"
                );
            }
            job
        }
    };
    let bytes = std::fs::read(batch).with_context(|| format!("reading {}", batch.display()))?;
    let n = bytes.len() as u64;
    runtime()?.block_on(async {
        let s = args.store.open().await?;
        // A job name is used once: say so before uploading, rather than have ingest refuse it.
        if let Ok(st) = fhe_batch_core::pipeline::job_status(&s, &job).await {
            anyhow::bail!(
                "job {job} already exists ({}); a new upload under its name would not run: submit with --job {job}-2 (or another new name)",
                st.state
            );
        }
        s.put(&layout::inbox(&job), bytes).await?;
        println!(
            "uploaded {} ({}) to {}/{} as job {job}",
            batch.display(),
            output::bytes(n),
            s.describe(),
            layout::inbox(&job)
        );
        Ok(())
    })
}
