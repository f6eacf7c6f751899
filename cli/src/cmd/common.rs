//! What several subcommands share: where the bucket is ([`StoreArg`]), the async runtime,
//! job id parsing, and how a model is split, compiled and written ([`CompileArgs`], for
//! `train` and `import`).

use crate::store;
use anyhow::{Context, Result, bail};
use fhe_batch_core::ids::JobId;
use fhe_batch_train::data::Dataset;
use std::path::PathBuf;

/// The local bucket when neither `--store` nor `FHE_BATCH_STORE` names one.
pub const DEFAULT_STORE: &str = ".fhe-batch/bucket";

#[derive(clap::Args, Debug)]
pub struct StoreArg {
    /// The local bucket: a directory standing in for the S3 bucket.
    #[arg(long, env = "FHE_BATCH_STORE", default_value = DEFAULT_STORE)]
    pub store: PathBuf,
    /// Use this S3 bucket (the deployed stack's BucketName output) instead of the local one.
    /// Credentials, region and endpoint come from the usual AWS environment
    /// (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL, ...).
    #[arg(long, env = "FHE_BATCH_BUCKET")]
    pub bucket: Option<String>,
}

impl StoreArg {
    pub async fn open(&self) -> Result<store::Bucket> {
        store::Bucket::open(&self.store, self.bucket.as_deref()).await
    }
}

/// How a model is quantized, evaluated and written (train and import).
#[derive(clap::Args, Debug)]
pub struct CompileArgs {
    /// Bits per quantized input and per integer weight (2..=16) of linear models. Tree
    /// ensembles ignore it: their inputs are threshold bits and their leaf resolution is
    /// measured on the calibration records.
    #[arg(long, default_value_t = 8)]
    pub n_bits: u8,
    /// Share of records held out to report accuracy on (0 reports on all records).
    #[arg(long, default_value_t = 0.2)]
    pub holdout: f64,
    /// Seed of the holdout split.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory of the compiled model.
    #[arg(long, short)]
    pub out: PathBuf,
}

impl CompileArgs {
    /// Splits `ds` into (calibration, evaluation, what the report is on).
    pub fn split(&self, ds: &Dataset) -> Result<(Dataset, Dataset, &'static str)> {
        if !(0.0..0.9).contains(&self.holdout) {
            bail!("--holdout must be in [0, 0.9)");
        }
        Ok(if self.holdout > 0.0 {
            let (t, e) = ds.split(self.holdout, self.seed);
            (t, e, "holdout")
        } else {
            (ds.clone(), ds.clone(), "all records")
        })
    }
}

/// The multi-threaded runtime the store and pipeline calls run on.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// A job named on the command line: `claims`, or `acme/claims` for tenant acme's job on a
/// multi-tenant stack.
pub fn job_arg(s: &str) -> Result<JobId> {
    JobId::parse_qualified(s).with_context(|| {
        let (mapped, _) = JobId::from_file_name(s);
        format!("invalid job id {s:?} (an upload named {s}.fheb runs as job {mapped})")
    })
}
