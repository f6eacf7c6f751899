//! `fhe-batch fetch`: download a finished job's encrypted result files to a directory.

use super::common::{StoreArg, job_arg, runtime};
use crate::{output, store};
use anyhow::{Result, bail};
use fhe_batch_core::job::JobState;
use fhe_batch_core::pipeline::job_status;
use std::path::PathBuf;

/// Download a job's result files (what `aws s3 cp --recursive s3://BUCKET/results/JOB/ DIR` does).
#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    job: String,
    /// Directory for the .fher files.
    #[arg(long, short)]
    out: PathBuf,
    #[command(flatten)]
    store: StoreArg,
}

pub fn run(args: FetchArgs) -> Result<()> {
    let job = job_arg(&args.job)?;
    let out = &args.out;
    runtime()?.block_on(async {
        let s = args.store.open().await?;
        let st = job_status(&s, &job).await?;
        if st.state != JobState::Succeeded {
            bail!("{}: results are not complete yet", output::status_line(&st));
        }
        std::fs::create_dir_all(out)?;
        let files = store::read_results_from_store(&s, &job).await?;
        let mut total = 0;
        for (key, bytes) in &files {
            let name = key.rsplit('/').next().unwrap_or(key);
            total += bytes.len() as u64;
            std::fs::write(out.join(name), bytes)?;
        }
        println!(
            "fetched {} result files ({}) of job {job} into {}",
            files.len(),
            output::bytes(total),
            out.display()
        );
        Ok(())
    })
}
