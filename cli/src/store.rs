//! Model directories and the local bucket.

use anyhow::{Context, Result, bail};
use fhe_batch_core::layout;
use fhe_batch_core::model::{ClientModel, MAX_CLIENT_PART_BYTES, ModelManifest, ModelPackage};
use fhe_batch_core::ports::ObjectStore;
use fhe_batch_local::FsStore;
use std::path::Path;

/// A compiled model as the client holds it: the manifest and the client part (no weights
/// are needed to encrypt or decrypt).
pub struct ClientSide {
    pub manifest: ModelManifest,
    pub client: ClientModel,
}

/// Writes a compiled model to a directory: `manifest.json`, `server.bin`, `client.json`.
pub fn write_model_dir(pkg: &ModelPackage, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, bytes) in [
        ("manifest.json", pkg.manifest_bytes()),
        ("server.bin", pkg.server_bytes.clone()),
        ("client.json", pkg.client_bytes.clone()),
    ] {
        std::fs::write(dir.join(name), bytes)
            .with_context(|| format!("writing {}", dir.join(name).display()))?;
    }
    Ok(())
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > limit {
        bail!(
            "{} is {} bytes; the limit is {limit}",
            path.display(),
            meta.len()
        );
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads the client side of a model directory, checking it against its manifest.
pub fn read_client_side(dir: &Path) -> Result<ClientSide> {
    let manifest = ModelManifest::from_bytes(&read_limited(
        &dir.join("manifest.json"),
        MAX_CLIENT_PART_BYTES,
    )?)
    .with_context(|| format!("{} is not a compiled model", dir.display()))?;
    let client = manifest
        .open_client(&read_limited(
            &dir.join("client.json"),
            MAX_CLIENT_PART_BYTES,
        )?)
        .with_context(|| format!("{}/client.json", dir.display()))?;
    Ok(ClientSide { manifest, client })
}

/// Publishes a model directory into a bucket under `models/<id>/` (idempotent).
pub async fn publish_model_dir(dir: &Path, store: &FsStore) -> Result<ModelManifest> {
    let side = read_client_side(dir)?;
    let server = read_limited(
        &dir.join("server.bin"),
        fhe_batch_core::model::MAX_SERVER_PART_BYTES,
    )?;
    side.manifest
        .open_server(&server)
        .with_context(|| format!("{}/server.bin", dir.display()))?;
    let id = side.manifest.model_id;
    // Parts first, manifest last: a model is visible only once complete.
    store.put(&layout::model_server(&id), server).await?;
    store
        .put(
            &layout::model_client(&id),
            std::fs::read(dir.join("client.json"))?,
        )
        .await?;
    store
        .put(
            &layout::model_manifest(&id),
            std::fs::read(dir.join("manifest.json"))?,
        )
        .await?;
    Ok(side.manifest)
}

/// Reads every result file of a job from a directory (as `aws s3 cp --recursive` leaves them).
pub fn read_result_dir(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(layout::RESULT_SUFFIX) {
            out.push((name, read_limited(&entry.path(), 1 << 30)?));
        }
    }
    if out.is_empty() {
        bail!(
            "no {} result files in {}",
            layout::RESULT_SUFFIX,
            dir.display()
        );
    }
    out.sort();
    Ok(out)
}

/// Reads every result object of a job from a bucket.
pub async fn read_results_from_store(
    store: &FsStore,
    job: &fhe_batch_core::ids::JobId,
) -> Result<Vec<(String, Vec<u8>)>> {
    let keys = store.list(&layout::results_prefix(job)).await?;
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let bytes = store.get(&k, 1 << 30).await?;
        out.push((k, bytes));
    }
    Ok(out)
}
