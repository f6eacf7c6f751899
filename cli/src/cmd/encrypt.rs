//! `fhe-batch encrypt`: a CSV of records into an encrypted batch file (.fheb) for one
//! compiled model, using only the model's client part, with the owner's secret key or with
//! its public key (a producer who must not read results).

use crate::{local, output, store};
use anyhow::{Context, Result};
use fhe_batch_fhe::{Encryptor, PublicKey};
use fhe_batch_train::data::{CellRules, read_records_with};
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
    /// Encrypt with the owner's public key instead of a secret key (KEY.pub from `keygen` or
    /// `publish-key`): anyone may hold it; it cannot decrypt. Batches are about twice the
    /// size (whole ciphertexts travel, not seeds).
    #[arg(long, conflicts_with = "key")]
    public_key: Option<PathBuf>,
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
    let (secret, public) = match &args.public_key {
        Some(path) => (None, Some(PublicKey::load(path)?)),
        None => (Some(store::load_secret_key(&args.key)?), None),
    };
    let key: Encryptor = match (&secret, &public) {
        (Some(k), _) => k.into(),
        (_, Some(k)) => k.into(),
        _ => unreachable!("one key was loaded"),
    };
    let mut eval_key = args.eval_key.clone();
    if let Some(pk) = &public {
        side.manifest
            .check_encryption(key.kind())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if eval_key.is_none() && side.manifest.family.bootstraps() {
            let id = pk.eval_key().with_context(|| {
                format!(
                    "model {} bootstraps and {} names no evaluation key: ask the key holder to run `fhe-batch publish-key` and send the public key it writes (or pass --eval-key ID)",
                    side.manifest.model_id,
                    args.public_key.as_ref().expect("public key path").display()
                )
            })?;
            eval_key = Some(id.to_string());
        }
    }
    let t = Instant::now();
    let raw = read_records_with(
        &args.input,
        &side.client.feature_names,
        CellRules::of(side.client.prefix.as_ref()),
    )?;
    let records = raw.len() / side.client.n_features();
    let columns = side
        .client
        .records_columns(&raw)
        .with_context(|| format!("preprocessing {}", args.input.display()))?;
    let chunk_layout = store::chunk_layout(
        &side,
        key.params(),
        &args.key,
        eval_key.as_deref(),
        args.chunk_records,
    )?;
    let pb = local::bar(records as u64, "encrypt", true);
    let bytes = fhe_batch_fhe::batch::encrypt_batch_with(
        key,
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
        "encrypted {records} records ({} encryption) into {} ({}, {} per record) in {}",
        key.kind(),
        out.display(),
        output::bytes(bytes.len() as u64),
        output::bytes(bytes.len() as u64 / records as u64),
        output::dur(t.elapsed())
    );
    Ok(())
}
