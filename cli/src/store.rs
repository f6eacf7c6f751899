//! Model directories and the local bucket.

use anyhow::{Context, Result, bail};
use fhe_batch_aws::S3Store;
use fhe_batch_core::layout;
use fhe_batch_core::model::{ClientModel, MAX_CLIENT_PART_BYTES, ModelManifest, ModelPackage};
use fhe_batch_core::ports::{ObjectStore, PutOutcome, StoreError};
use fhe_batch_core::retry::{RetryPolicy, Retrying};
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
pub async fn publish_model_dir(dir: &Path, store: &impl ObjectStore) -> Result<ModelManifest> {
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

/// Refuses, with the job's state and the next step, to read the results of a job that has not
/// succeeded: partial results would decrypt to a partial predictions file.
pub async fn require_succeeded(
    store: &impl ObjectStore,
    job: &fhe_batch_core::ids::JobId,
) -> Result<()> {
    use fhe_batch_core::job::JobState;
    use fhe_batch_core::pipeline::{StatusError, job_status};
    let st = match job_status(store, job).await {
        Ok(st) => st,
        Err(StatusError::NotFound(_)) => anyhow::bail!(
            "there is no job {job} in this bucket: check the name (`fhe-batch status` lists the jobs), or upload the batch with `fhe-batch submit`"
        ),
        Err(e) => return Err(e.into()),
    };
    match st.state {
        JobState::Succeeded => Ok(()),
        JobState::Queued | JobState::Running => anyhow::bail!(
            "job {job} is {} ({}/{} chunks done): nothing to decrypt yet; wait until `fhe-batch status {job}` says SUCCEEDED",
            st.state,
            st.chunks_done,
            st.chunks_total
        ),
        JobState::Failed => {
            let reason = st
                .failures
                .first()
                .map_or("no reason recorded".to_string(), |f| f.reason.clone());
            let next = if st.rejected_at_ingest() {
                format!(
                    "upload a corrected batch under the same name (it runs as attempt {})",
                    st.attempt + 1
                )
            } else {
                format!("`fhe-batch retry {job}` runs its unfinished chunks again")
            };
            anyhow::bail!(
                "job {job} FAILED ({reason}): its results are incomplete and are not decrypted; {next}"
            )
        }
    }
}

/// The SHA-256 of the batch header a job's record names (`None` when the record has none).
pub async fn job_batch_hash(
    store: &impl ObjectStore,
    job: &fhe_batch_core::ids::JobId,
) -> Result<Option<[u8; 32]>> {
    let bytes = store
        .get(
            &layout::job_manifest(job),
            fhe_batch_core::job::MAX_RECORD_BYTES,
        )
        .await?;
    let manifest: fhe_batch_core::job::JobManifest = serde_json::from_slice(&bytes)?;
    let mut h = [0u8; 32];
    Ok(hex::decode_to_slice(&manifest.header_sha256, &mut h)
        .ok()
        .map(|_| h))
}

/// Reads every result object of a job from a bucket (the job must have succeeded).
pub async fn read_results_from_store(
    store: &impl ObjectStore,
    job: &fhe_batch_core::ids::JobId,
) -> Result<Vec<(String, Vec<u8>)>> {
    require_succeeded(store, job).await?;
    let keys = store.list(&layout::results_prefix(job)).await?;
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let bytes = store.get(&k, 1 << 30).await?;
        out.push((k, bytes));
    }
    Ok(out)
}

/// Where the service's objects are: the local bucket (a directory) or an S3 bucket.
pub enum Bucket {
    Local(FsStore),
    S3(Retrying<S3Store>),
}

impl Bucket {
    /// The S3 bucket when one is named (credentials, region and endpoint come from the usual
    /// AWS environment, so `AWS_ENDPOINT_URL` reaches a local stack), else the local directory.
    pub async fn open(dir: &Path, s3_bucket: Option<&str>) -> Result<Self> {
        Ok(match s3_bucket {
            Some(name) => {
                let (s3, _) = fhe_batch_aws::config::clients().await;
                Bucket::S3(Retrying::new(
                    S3Store::new(s3, name),
                    RetryPolicy::default(),
                ))
            }
            None => Bucket::Local(
                FsStore::open(dir).with_context(|| format!("opening {}", dir.display()))?,
            ),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Bucket::Local(s) => s.root().display().to_string(),
            Bucket::S3(s) => format!("s3://{}", s.inner().bucket()),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Bucket::Local($s) => $call.await,
            Bucket::S3($s) => $call.await,
        }
    };
}

impl ObjectStore for Bucket {
    async fn get(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, StoreError> {
        delegate!(self, s => s.get(key, max_bytes))
    }
    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        delegate!(self, s => s.get_range(key, start, len))
    }
    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        delegate!(self, s => s.size(key))
    }
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        delegate!(self, s => s.put(key, bytes))
    }
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        delegate!(self, s => s.put_if_absent(key, bytes))
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        delegate!(self, s => s.list(prefix))
    }
}

/// Where `publish-key` saves the evaluation key id of a key file: `KEY.evalkey`.
/// The passphrase of a protected key file: `FHE_BATCH_PASSPHRASE`, else the first line of the
/// file `FHE_BATCH_PASSPHRASE_FILE` names (never a command-line argument, which other users of
/// the machine can read).
pub fn passphrase() -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
    if let Some(p) = std::env::var_os("FHE_BATCH_PASSPHRASE") {
        return Ok(Some(zeroize::Zeroizing::new(
            p.to_string_lossy().as_bytes().to_vec(),
        )));
    }
    if let Some(file) = std::env::var_os("FHE_BATCH_PASSPHRASE_FILE") {
        let text =
            zeroize::Zeroizing::new(std::fs::read_to_string(&file).with_context(|| {
                format!("reading the passphrase file {}", file.to_string_lossy())
            })?);
        let line = text.lines().next().unwrap_or("");
        return Ok(Some(zeroize::Zeroizing::new(line.as_bytes().to_vec())));
    }
    Ok(None)
}

/// Loads the secret key file, with its passphrase when it is protected.
pub fn load_secret_key(path: &Path) -> Result<fhe_batch_fhe::SecretKey> {
    let pass = if fhe_batch_fhe::SecretKey::is_sealed(path) {
        passphrase()?
    } else {
        None
    };
    Ok(fhe_batch_fhe::SecretKey::load_with(
        path,
        pass.as_ref().map(|p| p.as_slice()),
    )?)
}

/// The SHA-256 of a batch's header, from the batch's bytes (what its results are bound to).
pub fn batch_header_sha256(batch: &[u8]) -> Result<[u8; 32]> {
    Ok(fhe_batch_core::format::BatchHeader::parse(
        batch,
        &fhe_batch_core::format::BatchLimits::default(),
    )?
    .sha256())
}

/// The public key written beside a secret key file: `client.key` -> `client.pub`.
pub fn public_key_file(key: &Path) -> std::path::PathBuf {
    key.with_extension("pub")
}

pub fn eval_key_file(key: &Path) -> std::path::PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".evalkey");
    std::path::PathBuf::from(name)
}

/// The chunk layout of a batch for a model: linear models fill all N slots; tree ensembles get
/// chunks sized from their bootstrap count and name the evaluation key.
pub fn chunk_layout(
    side: &ClientSide,
    params: fhe_batch_core::params::ParamSet,
    key_path: &Path,
    eval_key: Option<&str>,
    chunk_records: Option<u32>,
) -> Result<fhe_batch_core::format::ChunkLayout> {
    let n = params.polynomial_size();
    let records_per_chunk = match chunk_records {
        Some(r) if r == 0 || r as usize > n => {
            anyhow::bail!("--chunk-records must be between 1 and {n}")
        }
        Some(r) => r,
        None if side.manifest.pbs_per_record > 0 => fhe_batch_core::budget::ChunkBudget::default()
            .records_per_chunk(side.manifest.pbs_per_record as usize, n)
            as u32,
        None => n as u32,
    };
    let eval_key = if side.manifest.family.bootstraps() {
        let text = match eval_key {
            Some(id) => id.to_string(),
            None => {
                let saved = eval_key_file(key_path);
                std::fs::read_to_string(&saved).with_context(|| {
                    format!(
                        "model {} needs your evaluation key: run `fhe-batch publish-key --key {}` first (no {})",
                        side.manifest.model_id,
                        key_path.display(),
                        saved.display()
                    )
                })?
            }
        };
        Some(
            text.trim()
                .parse()
                .with_context(|| format!("evaluation key id {:?}", text.trim()))?,
        )
    } else {
        None
    };
    Ok(fhe_batch_core::format::ChunkLayout {
        records_per_chunk,
        eval_key,
        encryption: fhe_batch_core::params::Encryption::SecretKey,
    })
}
