//! `fhe-batch publish`: a compiled model directory into the bucket's models/<model_id>/.

use super::common::{StoreArg, runtime};
use crate::store;
use anyhow::Result;
use std::path::PathBuf;

/// Publish a compiled model to the bucket (models/<model_id>/).
#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    #[arg(long, short)]
    model: PathBuf,
    #[command(flatten)]
    store: StoreArg,
}

pub fn run(args: PublishArgs) -> Result<()> {
    runtime()?.block_on(async {
        let s = args.store.open().await?;
        let m = store::publish_model_dir(&args.model, &s).await?;
        println!(
            "published model {} to {}/models/{}/",
            m.model_id,
            s.describe(),
            m.model_id
        );
        Ok(())
    })
}
