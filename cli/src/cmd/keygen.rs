//! `fhe-batch keygen`: the data owner's secret key, written owner-only, and its public key.

use crate::output;
use anyhow::Result;
use fhe_batch_core::params::ParamSet;
use fhe_batch_fhe::{PublicKey, SecretKey};
use std::path::PathBuf;
use std::time::Instant;

/// Generate a secret key (written owner-only; it never leaves this machine) and its public key
/// (KEY with the extension .pub): whoever holds the public key can encrypt batches for your
/// models (`encrypt --public-key`) but can read nothing, not even what it encrypted.
#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    #[arg(long, short, default_value = "client.key")]
    out: PathBuf,
    /// Replace an existing key file.
    #[arg(long)]
    force: bool,
    /// Protect the key file with a passphrase (Argon2id, XChaCha20-Poly1305), read from
    /// FHE_BATCH_PASSPHRASE or the file FHE_BATCH_PASSPHRASE_FILE names; every command that
    /// reads the key then needs it the same way. Off by default.
    #[arg(long)]
    protect: bool,
}

pub fn run(args: KeygenArgs) -> Result<()> {
    let t = Instant::now();
    let key = SecretKey::generate(ParamSet::Glwe2048TUniform17);
    let pass = if args.protect {
        Some(crate::store::passphrase()?.ok_or_else(|| {
            anyhow::anyhow!("--protect needs a passphrase: set FHE_BATCH_PASSPHRASE or FHE_BATCH_PASSPHRASE_FILE")
        })?)
    } else {
        None
    };
    key.save_with(&args.out, args.force, pass.as_ref().map(|p| p.as_slice()))?;
    println!(
        "secret key {} written to {} (owner-only{}, {}); fingerprint {}",
        key.params(),
        args.out.display(),
        if args.protect {
            ", passphrase-protected"
        } else {
            ""
        },
        output::dur(t.elapsed()),
        key.fingerprint()
    );
    println!("keep it private: it is the only way to read your results");
    let public = crate::store::public_key_file(&args.out);
    PublicKey::generate(&key, None).save(&public, true)?;
    println!(
        "public key written to {}: producers encrypt with it (`fhe-batch encrypt --public-key`) and cannot decrypt; for tree and network models run `fhe-batch publish-key` first, which rewrites it with your evaluation key id",
        public.display()
    );
    Ok(())
}
