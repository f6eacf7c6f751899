//! `fhe-batch encrypt`: a CSV of records into an encrypted batch file (.fheb) for one
//! compiled model, using only the model's client part.

use crate::{local, output, store};
use anyhow::{Context, Result};
use fhe_batch_fhe::SecretKey;
use fhe_batch_train::data::read_records;
use std::path::PathBuf;
use std::time::Instant;

/// Encrypt a CSV of records into a batch file (.fheb) for a compiled model.
///
/// The CSV needs a header row naming the model's features; other columns are ignored.
#[derive(clap::Args, Debug)]
pub struct EncryptArgs {
    /// Compiled model directory (only its client part is used).
    #[arg(long, short)]
    model: PathBuf,
    #[arg(long, short, default_value = "client.key")]
    key: PathBuf,
    #[arg(long, short)]
    input: PathBuf,
    #[arg(long, short)]
    out: PathBuf,
    /// Tree ensembles: the evaluation key id to name (default: the one `publish-key` saved
    /// next to the key file, KEY.evalkey).
    #[arg(long)]
    eval_key: Option<String>,
    /// Records per chunk (default: all N slots for linear models; for tree ensembles, sized
    /// from the model's bootstrap count so a chunk takes about 5 minutes on a worker).
    #[arg(long)]
    chunk_records: Option<u32>,
}

pub fn run(args: EncryptArgs) -> Result<()> {
    let side = store::read_client_side(&args.model)?;
    let key = SecretKey::load(&args.key)?;
    let t = Instant::now();
    let raw = read_records(&args.input, &side.client.feature_names)?;
    let records = raw.len() / side.client.n_features();
    let columns: Vec<u64> = raw
        .chunks_exact(side.client.n_features())
        .flat_map(|r| side.client.columns(r))
        .collect();
    let chunk_layout = store::chunk_layout(
        &side,
        key.params(),
        &args.key,
        args.eval_key.as_deref(),
        args.chunk_records,
    )?;
    let pb = local::bar(records as u64, "encrypt", true);
    let bytes = fhe_batch_fhe::batch::encrypt_batch_with(
        &key,
        &side.client,
        side.manifest.model_id,
        &columns,
        chunk_layout,
        &|n| pb.inc(n),
    );
    pb.finish_and_clear();
    let out = &args.out;
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "encrypted {records} records into {} ({}, {} per record) in {}",
        out.display(),
        output::bytes(bytes.len() as u64),
        output::bytes(bytes.len() as u64 / records as u64),
        output::dur(t.elapsed())
    );
    Ok(())
}
