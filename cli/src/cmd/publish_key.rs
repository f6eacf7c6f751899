//! `fhe-batch publish-key`: the evaluation key of a secret key (public material for
//! bootstrapping), uploaded once under its content hash; its id is saved next to the key.

use super::common::{StoreArg, runtime};
use crate::{output, store};
use anyhow::{Context, Result};
use fhe_batch_core::ids::TenantId;
use fhe_batch_core::layout;
use fhe_batch_core::ports::ObjectStore;
use fhe_batch_fhe::PublicKey;
use std::path::PathBuf;
use std::time::Instant;

/// Generate the evaluation key of your secret key (tfhe's compressed server key and a
/// packing key: public material that lets the service bootstrap, never decrypt) and upload
/// it once to keys/<id>/eval.key, where id is a hash of its content. Tree ensembles need
/// it. The id is saved next to the key file (KEY.evalkey) for `encrypt`, and in a fresh public
/// key (KEY with the extension .pub) for producers who encrypt with `--public-key`.
#[derive(clap::Args, Debug)]
pub struct PublishKeyArgs {
    #[arg(long, short, default_value = "client.key")]
    key: PathBuf,
    /// On a multi-tenant stack, your tenant: the key goes to keys/<tenant>/<id>/eval.key.
    #[arg(long, value_parser = tenant_arg)]
    tenant: Option<TenantId>,
    #[command(flatten)]
    store: StoreArg,
}

pub fn run(args: PublishKeyArgs) -> Result<()> {
    let sk = store::load_secret_key(&args.key)?;
    let t = Instant::now();
    let bytes = fhe_batch_fhe::forest::EvalKey::generate(&sk).to_bytes();
    let id = fhe_batch_fhe::forest::eval_key_id(&bytes);
    let generated = t.elapsed();
    let n = bytes.len() as u64;
    runtime()?.block_on(async {
        let s = args.store.open().await?;
        let location = layout::eval_key_of(args.tenant.as_ref(), &id);
        s.put_if_absent(&location, bytes).await?;
        let saved = store::eval_key_file(&args.key);
        std::fs::write(&saved, format!("{id}\n"))
            .with_context(|| format!("writing {}", saved.display()))?;
        let public = store::public_key_file(&args.key);
        PublicKey::generate(&sk, Some(id)).save(&public, true)?;
        println!(
            "evaluation key {id} ({}, generated in {}) uploaded to {}/{}; its id is saved in {}",
            output::bytes(n),
            output::dur(generated),
            s.describe(),
            location,
            saved.display()
        );
        println!(
            "public key for producers (names this evaluation key): {}",
            public.display()
        );
        Ok(())
    })
}

fn tenant_arg(s: &str) -> Result<TenantId, String> {
    TenantId::parse(s).map_err(|e| e.to_string())
}
