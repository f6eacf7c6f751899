//! Tree ensembles through the pipeline core: ingest refuses batches whose evaluation key is
//! missing or whose chunks would overrun a worker, the worker downloads the key once, checks
//! it and keeps it (memory, then local disk across a cold start), and every decrypted score is
//! the plaintext integer reference.

use crate::common::*;
use fhe_batch_core::format::{BatchLimits, ChunkLayout};
use fhe_batch_core::ids::EvalKeyId;
use fhe_batch_core::job::{FailureKind, JobState};
use fhe_batch_core::layout;
use fhe_batch_core::model::ModelPackage;
use fhe_batch_core::pipeline::{IngestOutcome, Worker, WorkerConfig, ingest_object};
use fhe_batch_core::ports::ObjectStore;
use fhe_batch_fhe::FheEvaluator;
use fhe_batch_fhe::forest::{EvalKey, eval_key_id};
use fhe_batch_train::trees::CompiledForest;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub(crate) struct Tree {
    pub(crate) pkg: ModelPackage,
    compiled: CompiledForest,
    rows: Vec<Vec<f64>>,
    pub(crate) key_bytes: Vec<u8>,
}

pub(crate) fn tree() -> &'static Tree {
    static T: OnceLock<Tree> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/onnx");
        let bytes = std::fs::read(dir.join("bc-tree-d4.onnx")).unwrap();
        let fhe_batch_onnx::FloatModel::Trees(e) =
            fhe_batch_onnx::import_onnx(&bytes).unwrap().model
        else {
            panic!("a tree")
        };
        let ds = fhe_batch_train::data::read_labelled_csv(
            &data_path("breast_cancer.csv"),
            "label",
            fhe_batch_train::Task::Auto,
        )
        .unwrap();
        let compiled = fhe_batch_train::trees::quantize_trees(&e).unwrap();
        let pkg = fhe_batch_train::trees::package_forest(
            &e,
            &compiled,
            ds.feature_names.clone(),
            "label".into(),
            None,
            None,
            "",
        )
        .unwrap();
        let rows = (0..40).map(|i| ds.row(i).to_vec()).collect();
        let key_bytes = EvalKey::generate(key()).to_bytes();
        Tree {
            pkg,
            compiled,
            rows,
            key_bytes,
        }
    })
}

pub(crate) fn batch(layout: ChunkLayout) -> Vec<u8> {
    let t = tree();
    let cols: Vec<u64> = t
        .rows
        .iter()
        .flat_map(|r| t.pkg.client.columns(r))
        .collect();
    fhe_batch_fhe::batch::encrypt_batch_with(
        key(),
        &t.pkg.client,
        t.pkg.manifest.model_id,
        &cols,
        layout,
        &|_| {},
    )
}

/// The decision tree's model package (also a fuzz seed).
pub fn tree_package() -> &'static ModelPackage {
    &tree().pkg
}

pub(crate) fn key_id() -> EvalKeyId {
    eval_key_id(&tree().key_bytes)
}

#[tokio::test]
async fn ingest_refuses_tree_batches_it_cannot_run() {
    let env = Env::new().await;
    publish(&env.store, &tree().pkg).await;
    let q = queue(Duration::from_secs(30));
    let cases = [
        (
            "no-key",
            ChunkLayout {
                records_per_chunk: 16,
                eval_key: None,
                encryption: fhe_batch_core::params::Encryption::SecretKey,
            },
            "needs an evaluation key",
        ),
        (
            "key-missing",
            ChunkLayout {
                records_per_chunk: 16,
                eval_key: Some(key_id()),
                encryption: fhe_batch_core::params::Encryption::SecretKey,
            },
            "is not uploaded",
        ),
    ];
    for (job, layout, reason) in cases {
        let job = env.upload(job, batch(layout)).await;
        let o = env.ingest(&q, &job).await;
        assert!(
            matches!(&o, IngestOutcome::Rejected { reason: r, .. } if r.contains(reason)),
            "{job}: {o:?}"
        );
        let st = env.status(&job).await;
        assert_eq!(st.state, JobState::Failed);
        assert_eq!(st.failures[0].kind, FailureKind::Model);
    }
    // With the key uploaded, chunks sized far past the worker's time budget are refused too:
    // 2,048 records x 7 bootstraps is fine, so stretch the model's cost in its manifest.
    env.store
        .put(&layout::eval_key(&key_id()), tree().key_bytes.clone())
        .await
        .unwrap();
    let mut pkg = tree().pkg.clone();
    pkg.manifest.pbs_per_record = 100;
    env.store
        .put(
            &layout::model_manifest(&pkg.manifest.model_id),
            pkg.manifest_bytes(),
        )
        .await
        .unwrap();
    let job = env
        .upload(
            "too-big",
            batch(ChunkLayout {
                records_per_chunk: 2048,
                eval_key: Some(key_id()),
                encryption: fhe_batch_core::params::Encryption::SecretKey,
            }),
        )
        .await;
    let o = ingest_object(
        &env.store,
        &q,
        &layout::inbox(&job),
        &BatchLimits::default(),
    )
    .await
    .unwrap();
    assert!(
        matches!(&o, IngestOutcome::Rejected { reason, .. } if reason.contains("smaller chunks")),
        "{o:?}"
    );
    assert!(q.is_idle());
}

/// Uploads a tree batch naming `key` in chunks of `slots`, ingests it (returning the outcome)
/// and drains the queue with `workers` workers over one `FheEvaluator` (its disk cache in
/// `disk`).
async fn run_tree_job(
    env: &Env,
    name: &str,
    slots: u32,
    key: EvalKeyId,
    disk: Option<std::path::PathBuf>,
    workers: usize,
) -> (fhe_batch_core::ids::JobId, IngestOutcome) {
    let q = queue(Duration::from_secs(60));
    let job = env
        .upload(
            name,
            batch(ChunkLayout {
                records_per_chunk: slots,
                eval_key: Some(key),
                encryption: fhe_batch_core::params::Encryption::SecretKey,
            }),
        )
        .await;
    let outcome = env.ingest(&q, &job).await;
    let worker = Arc::new(Worker::new(
        env.store.clone(),
        FheEvaluator::new(disk),
        WorkerConfig { max_receives: 5 },
    ));
    drain(worker, &q, workers).await;
    (job, outcome)
}

#[tokio::test]
async fn a_tree_job_runs_with_the_key_loaded_once_and_decrypts_exactly() {
    let env = Env::new().await;
    let t = tree();
    publish(&env.store, &t.pkg).await;
    env.store
        .put(&layout::eval_key(&key_id()), t.key_bytes.clone())
        .await
        .unwrap();
    let disk = tempfile::tempdir().unwrap();
    let (job, outcome) = run_tree_job(
        &env,
        "tree",
        16,
        key_id(),
        Some(disk.path().to_path_buf()),
        2,
    )
    .await;
    assert!(matches!(outcome, IngestOutcome::Queued { chunks: 3, .. }));
    let st = env.status(&job).await;
    assert_eq!(st.state, JobState::Succeeded, "{st:?}");
    let files = env.results(&job).await;
    let scores = fhe_batch_fhe::batch::decrypt_job(
        key(),
        &t.pkg.client,
        &t.pkg.manifest.model_id,
        &files,
        &|_| {},
    )
    .unwrap();
    let want: Vec<i64> = t
        .rows
        .iter()
        .flat_map(|r| {
            let x: Vec<f32> = r.iter().map(|&v| v as f32).collect();
            t.compiled.model.eval_plain(&t.compiled.model.bits(&x))
        })
        .collect();
    assert_eq!(scores, want);
    // The key file was cached on local disk: a fresh evaluator (a cold start on the same
    // machine) finds it there, re-checks it and needs no download.
    let cold = FheEvaluator::new(Some(disk.path().to_path_buf()));
    use fhe_batch_core::pipeline::ChunkEvaluator;
    assert!(cold.has_eval_key(&key_id()));
    assert!(cold.last_cold_start().unwrap().from_disk_cache);
    // A damaged cached file is discarded, not trusted.
    let cached = disk.path().join(format!("{}.key", key_id()));
    let mut bytes = std::fs::read(&cached).unwrap();
    bytes[500] ^= 1;
    std::fs::write(&cached, bytes).unwrap();
    assert!(!FheEvaluator::new(Some(disk.path().to_path_buf())).has_eval_key(&key_id()));
    assert!(!cached.exists());
}

#[tokio::test]
async fn a_damaged_evaluation_key_fails_the_job_with_its_id() {
    let env = Env::new().await;
    let t = tree();
    publish(&env.store, &t.pkg).await;
    let mut damaged = t.key_bytes.clone();
    damaged[2000] ^= 0x40;
    // Stored under the real key's id: the content no longer hashes to it.
    env.store
        .put(&layout::eval_key(&key_id()), damaged)
        .await
        .unwrap();
    let (job, _) = run_tree_job(&env, "damaged", 64, key_id(), None, 1).await;
    let st = env.status(&job).await;
    assert_eq!(st.state, JobState::Failed, "{st:?}");
    assert!(
        st.failures[0].reason.contains(&key_id().to_string()),
        "{:?}",
        st.failures
    );
}

#[tokio::test]
async fn an_evaluation_key_of_another_secret_key_fails_the_job_instead_of_giving_garbage() {
    let env = Env::new().await;
    let t = tree();
    publish(&env.store, &t.pkg).await;
    let stranger =
        fhe_batch_fhe::SecretKey::generate(fhe_batch_core::params::ParamSet::Glwe2048TUniform17);
    let bytes = EvalKey::generate(&stranger).to_bytes();
    let id = eval_key_id(&bytes);
    env.store.put(&layout::eval_key(&id), bytes).await.unwrap();
    let (job, _) = run_tree_job(&env, "stranger", 64, id, None, 1).await;
    let st = env.status(&job).await;
    assert_eq!(st.state, JobState::Failed, "{st:?}");
    assert!(
        st.failures[0].reason.contains("belongs to secret key"),
        "{:?}",
        st.failures
    );
    assert!(
        env.store
            .list(&layout::results_prefix(&job))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A store that counts the whole-object GETs of one key, each slowed down so that concurrent
/// callers overlap.
struct CountingStore {
    inner: fhe_batch_local::FsStore,
    counted: String,
    gets: std::sync::atomic::AtomicUsize,
}

impl ObjectStore for CountingStore {
    async fn get(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, fhe_batch_core::ports::StoreError> {
        if key == self.counted {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.inner.get(key, max_bytes).await
    }
    async fn get_range(
        &self,
        key: &str,
        start: u64,
        len: u64,
    ) -> Result<Vec<u8>, fhe_batch_core::ports::StoreError> {
        self.inner.get_range(key, start, len).await
    }
    async fn size(&self, key: &str) -> Result<Option<u64>, fhe_batch_core::ports::StoreError> {
        self.inner.size(key).await
    }
    async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
    ) -> Result<(), fhe_batch_core::ports::StoreError> {
        self.inner.put(key, bytes).await
    }
    async fn put_if_absent(
        &self,
        key: &str,
        bytes: Vec<u8>,
    ) -> Result<fhe_batch_core::ports::PutOutcome, fhe_batch_core::ports::StoreError> {
        self.inner.put_if_absent(key, bytes).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, fhe_batch_core::ports::StoreError> {
        self.inner.list(prefix).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_meeting_a_new_key_at_once_download_and_expand_it_once() {
    use fhe_batch_core::pipeline::ChunkEvaluator;
    use fhe_batch_core::ports::MAX_EVAL_KEY_BYTES;
    let env = Env::new().await;
    let path = layout::eval_key(&key_id());
    env.store
        .put(&path, tree().key_bytes.clone())
        .await
        .unwrap();
    let store = Arc::new(CountingStore {
        inner: env.store.clone(),
        counted: path.clone(),
        gets: Default::default(),
    });
    let evaluator = Arc::new(FheEvaluator::new(None));
    // What the worker does for each chunk that names the key, from 6 chunks at once.
    let mut loads = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (store, evaluator, path) = (store.clone(), evaluator.clone(), path.clone());
        loads.spawn(async move {
            let id = key_id();
            let fetch = Box::pin(store.get(&path, MAX_EVAL_KEY_BYTES));
            evaluator.prepare_eval_key(&id, fetch).await
        });
    }
    for loaded in loads.join_all().await {
        loaded.unwrap();
    }
    assert_eq!(store.gets.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(evaluator.has_eval_key(&key_id()));
    assert!(!evaluator.last_cold_start().unwrap().from_disk_cache);
    // Once loaded, the key needs no download.
    let fetch = Box::pin(store.get(&path, MAX_EVAL_KEY_BYTES));
    evaluator.prepare_eval_key(&key_id(), fetch).await.unwrap();
    assert_eq!(store.gets.load(std::sync::atomic::Ordering::SeqCst), 1);
}
