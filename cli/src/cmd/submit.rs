//! `fhe-batch submit`: upload an encrypted batch to the bucket's inbox/, which starts a job.

use super::common::{StoreArg, job_arg, runtime};
use crate::output;
use anyhow::{Context, Result};
use fhe_batch_core::layout;
use fhe_batch_core::ports::ObjectStore;
use std::path::PathBuf;

/// Upload a batch to the bucket's inbox/ (what `aws s3 cp batch.fheb s3://BUCKET/inbox/` does).
///
/// A job name runs one batch: a name in use is refused, except that of a job whose batch was
/// refused at ingest, which the upload corrects (it runs as the job's next attempt).
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
        // A job name runs one batch: say so before uploading, rather than have ingest refuse it.
        let existing = fhe_batch_core::pipeline::job_status(&s, &job).await.ok();
        let attempt = match &existing {
            None => None,
            Some(st) if st.rejected_at_ingest() => Some(st.attempt + 1),
            Some(st) if st.state == fhe_batch_core::job::JobState::Failed => anyhow::bail!(
                "job {job} FAILED after its batch ran ({}/{} chunks have results); a new upload under its name would not run: `fhe-batch retry {job}` runs its unfinished chunks again, or submit this batch with --job {job}-2 (or another new name)",
                st.chunks_done,
                st.chunks_total
            ),
            Some(st) => anyhow::bail!(
                "job {job} already exists ({}); a new upload under its name would not run: submit with --job {job}-2 (or another new name)",
                st.state
            ),
        };
        s.put(&layout::inbox(&job), bytes).await?;
        println!(
            "uploaded {} ({}) to {}/{} as job {job}",
            batch.display(),
            output::bytes(n),
            s.describe(),
            layout::inbox(&job)
        );
        if let (Some(next), Some(st)) = (attempt, &existing) {
            let reason = st.failures.first().map_or("", |f| f.reason.as_str());
            println!(
                "job {job}'s previous upload was refused at ingest ({reason}); this one runs as attempt {next} (unless it is refused for the same reason again)"
            );
        }
        Ok(())
    })
}
