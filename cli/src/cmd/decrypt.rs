//! `fhe-batch decrypt`: a job's encrypted results (from the bucket or a directory) into a
//! predictions CSV, with the secret key that encrypted the batch.

use super::common::{StoreArg, job_arg, runtime};
use crate::{output, store};
use anyhow::{Result, bail};
use fhe_batch_fhe::SecretKey;
use std::path::PathBuf;
use std::time::Instant;

/// Decrypt a job's results into a predictions CSV.
#[derive(clap::Args, Debug)]
pub struct DecryptArgs {
    #[arg(long, short)]
    model: PathBuf,
    #[arg(long, short, default_value = "client.key")]
    key: PathBuf,
    /// Read results of this job from the bucket...
    #[arg(long, conflicts_with = "results")]
    job: Option<String>,
    /// ...or from a directory of .fher files (e.g. `aws s3 cp --recursive s3://BUCKET/results/JOB/ DIR`).
    #[arg(long)]
    results: Option<PathBuf>,
    #[arg(long, short, default_value = "predictions.csv")]
    out: PathBuf,
    #[command(flatten)]
    store: StoreArg,
}

pub fn run(args: DecryptArgs) -> Result<()> {
    let side = store::read_client_side(&args.model)?;
    let key = SecretKey::load(&args.key)?;
    let files = match (&args.job, &args.results) {
        (Some(j), None) => runtime()?.block_on(async {
            let s = args.store.open().await?;
            store::read_results_from_store(&s, &job_arg(j)?).await
        })?,
        (None, Some(dir)) => store::read_result_dir(dir)?,
        _ => bail!("pass --job JOB (read from the bucket) or --results DIR"),
    };
    let t = Instant::now();
    let logits = fhe_batch_fhe::batch::decrypt_job(
        &key,
        &side.client,
        &side.manifest.model_id,
        &files,
        &|_| {},
    )?;
    let n = output::write_predictions(&args.out, &side.client, &logits)?;
    println!(
        "decrypted {n} predictions into {} in {}",
        args.out.display(),
        output::dur(t.elapsed())
    );
    Ok(())
}
