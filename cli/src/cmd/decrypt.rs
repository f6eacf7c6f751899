//! `fhe-batch decrypt`: a job's encrypted results (from the bucket or a directory) into a
//! predictions CSV, with the secret key that encrypted the batch.

use super::common::{StoreArg, job_arg, runtime};
use crate::{output, store};
use anyhow::{Result, bail};
use fhe_batch_fhe::batch::ExpectedBatch;
use std::path::{Path, PathBuf};
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
    /// With --job: the .fheb file that was uploaded, so every result must answer exactly that
    /// batch (by default the batch named in the job's record in the bucket).
    #[arg(long, requires = "job")]
    batch: Option<PathBuf>,
    #[arg(long, short, default_value = "predictions.csv")]
    out: PathBuf,
    #[command(flatten)]
    store: StoreArg,
}

pub fn run(args: DecryptArgs) -> Result<()> {
    let side = store::read_client_side(&args.model)?;
    let key = store::load_secret_key(&args.key)?;
    let (files, expected) = match (&args.job, &args.results) {
        (Some(j), None) => runtime()?.block_on(async {
            let s = args.store.open().await?;
            let job = job_arg(j)?;
            let files = store::read_results_from_store(&s, &job).await?;
            let batch_header_sha256 = match &args.batch {
                Some(path) => Some(batch_header_sha256(path)?),
                None => store::job_batch_hash(&s, &job).await?,
            };
            let expected = ExpectedBatch {
                job,
                batch_header_sha256,
            };
            anyhow::Ok((files, Some(expected)))
        })?,
        (None, Some(dir)) => (store::read_result_dir(dir)?, None),
        _ => bail!("pass --job JOB (read from the bucket) or --results DIR"),
    };
    let t = Instant::now();
    let (client, model_id) = (&side.client, &side.manifest.model_id);
    // Results of the job are bound to it and to its batch: another job's copied in is refused.
    let logits = match &expected {
        Some(e) => {
            fhe_batch_fhe::batch::decrypt_job_for(&key, client, model_id, e, &files, &|_| {})?
        }
        None => fhe_batch_fhe::batch::decrypt_job(&key, client, model_id, &files, &|_| {})?,
    };
    let n = output::write_predictions(&args.out, &side.client, &logits)?;
    println!(
        "decrypted {n} predictions into {} in {}",
        args.out.display(),
        output::dur(t.elapsed())
    );
    Ok(())
}

/// SHA-256 of a batch file's header (what its results are bound to).
fn batch_header_sha256(path: &Path) -> Result<[u8; 32]> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    crate::store::batch_header_sha256(&bytes)
}
