use fhe_batch_core::format::BatchLimits;
use fhe_batch_core::ids::JobId;
use fhe_batch_core::job::{JobState, JobStatus};
use fhe_batch_core::layout;
use fhe_batch_core::model::ModelPackage;
use fhe_batch_core::params::ParamSet;
use fhe_batch_core::pipeline::{
    ChunkEvaluator, IngestOutcome, LoopConfig, Worker, WorkerConfig, ingest_object, job_status,
    run_queue_worker,
};
use fhe_batch_core::ports::{JobQueue, ObjectStore};
use fhe_batch_fhe::{GlweEvaluator, SecretKey};
use fhe_batch_local::{FsStore, MemQueue, MemQueueConfig};
use fhe_batch_train::data::{Dataset, read_labelled_csv};
use fhe_batch_train::{Task, TrainOptions};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data")
        .join(name)
}

pub fn iris() -> &'static Dataset {
    static DS: OnceLock<Dataset> = OnceLock::new();
    DS.get_or_init(|| read_labelled_csv(&data_path("iris.csv"), "label", Task::Auto).unwrap())
}

pub fn key() -> &'static SecretKey {
    static KEY: OnceLock<SecretKey> = OnceLock::new();
    KEY.get_or_init(|| SecretKey::generate(ParamSet::Glwe2048TUniform17))
}

pub fn iris_package() -> &'static ModelPackage {
    static PKG: OnceLock<ModelPackage> = OnceLock::new();
    PKG.get_or_init(|| {
        let model = fhe_batch_train::train(iris(), &TrainOptions::default()).unwrap();
        fhe_batch_train::compile(&model, iris(), iris(), 8, ParamSet::Glwe2048TUniform17).unwrap()
    })
}

pub fn quantize(pkg: &ModelPackage, ds: &Dataset) -> Vec<u64> {
    (0..ds.len())
        .flat_map(|i| pkg.client.columns(ds.row(i)))
        .collect()
}

/// A batch of `n` Iris-like records for the Iris model, with its quantized inputs.
pub fn iris_batch(n: usize, seed: u64) -> (Vec<u8>, Vec<u64>) {
    let pkg = iris_package();
    let ds = if n == iris().len() {
        iris().clone()
    } else {
        iris().synthesize(n, seed)
    };
    let q = quantize(pkg, &ds);
    let bytes =
        fhe_batch_fhe::batch::encrypt_batch(key(), &pkg.client, pkg.manifest.model_id, &q, &|_| {});
    (bytes, q)
}

pub fn queue(visibility: Duration) -> MemQueue {
    MemQueue::new(MemQueueConfig {
        visibility_timeout: visibility,
        max_receives: 5,
    })
}

/// A local bucket in a temporary directory with the Iris model published.
pub struct Env {
    pub _dir: tempfile::TempDir,
    pub store: FsStore,
}

impl Env {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path().join("bucket")).unwrap();
        publish(&store, iris_package()).await;
        Self { _dir: dir, store }
    }

    pub async fn upload(&self, job: &str, bytes: Vec<u8>) -> JobId {
        let job = JobId::parse(job).unwrap();
        self.store.put(&layout::inbox(&job), bytes).await.unwrap();
        job
    }

    pub async fn ingest(&self, q: &MemQueue, job: &JobId) -> IngestOutcome {
        ingest_object(&self.store, q, &layout::inbox(job), &BatchLimits::default())
            .await
            .unwrap()
    }

    pub async fn status(&self, job: &JobId) -> JobStatus {
        job_status(&self.store, job).await.unwrap()
    }

    pub fn worker(&self) -> Arc<Worker<FsStore, GlweEvaluator>> {
        Arc::new(Worker::new(
            self.store.clone(),
            GlweEvaluator,
            WorkerConfig { max_receives: 5 },
        ))
    }

    /// Every result file of a job, with its key.
    pub async fn results(&self, job: &JobId) -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for k in self.store.list(&layout::results_prefix(job)).await.unwrap() {
            files.push((k.clone(), self.store.get(&k, 1 << 30).await.unwrap()));
        }
        files
    }

    /// Encrypts raw `rows` for `pkg` (its client-side preprocessing first, if any; with the
    /// tests' secret key) in chunks of `layout`, runs the
    /// job through ingest and `workers` workers over a fresh `FheEvaluator`, checks that it
    /// SUCCEEDED, and returns the ingest outcome and the decrypted result values.
    pub async fn run_decrypted(
        &self,
        name: &str,
        pkg: &ModelPackage,
        rows: &[Vec<f64>],
        layout: fhe_batch_core::format::ChunkLayout,
        workers: usize,
    ) -> (IngestOutcome, Vec<i64>) {
        let cols: Vec<u64> = rows
            .iter()
            .flat_map(|r| pkg.client.record_columns(r).unwrap())
            .collect();
        let batch = fhe_batch_fhe::batch::encrypt_batch_with(
            key(),
            &pkg.client,
            pkg.manifest.model_id,
            &cols,
            layout,
            &|_| {},
        );
        let q = queue(Duration::from_secs(60));
        let job = self.upload(name, batch).await;
        let outcome = self.ingest(&q, &job).await;
        let worker = Arc::new(Worker::new(
            self.store.clone(),
            fhe_batch_fhe::FheEvaluator::new(None),
            WorkerConfig { max_receives: 5 },
        ));
        drain(worker, &q, workers).await;
        let st = self.status(&job).await;
        assert_eq!(st.state, JobState::Succeeded, "{st:?}");
        let files = self.results(&job).await;
        let values = fhe_batch_fhe::batch::decrypt_job(
            key(),
            &pkg.client,
            &pkg.manifest.model_id,
            &files,
            &|_| {},
        )
        .unwrap();
        (outcome, values)
    }

    /// Decrypts a finished job and checks every record against the plaintext reference.
    pub async fn assert_exact(&self, job: &JobId, quantized: &[u64]) {
        let st = self.status(job).await;
        assert_eq!(st.state, JobState::Succeeded, "{st:?}");
        let pkg = iris_package();
        let files = self.results(job).await;
        assert_eq!(files.len() as u32, st.chunks_total, "one result per chunk");
        let logits = fhe_batch_fhe::batch::decrypt_job(
            key(),
            &pkg.client,
            &pkg.manifest.model_id,
            &files,
            &|_| {},
        )
        .unwrap();
        let f = pkg.client.n_features();
        let outputs = pkg.client.n_scores();
        assert_eq!(logits.len(), quantized.len() / f * outputs);
        for (q, l) in quantized.chunks_exact(f).zip(logits.chunks_exact(outputs)) {
            assert_eq!(pkg.server.eval_plain(q), l);
        }
    }
}

pub async fn publish<S: ObjectStore>(store: &S, pkg: &ModelPackage) {
    let id = pkg.manifest.model_id;
    store
        .put(&layout::model_server(&id), pkg.server_bytes.clone())
        .await
        .unwrap();
    store
        .put(&layout::model_client(&id), pkg.client_bytes.clone())
        .await
        .unwrap();
    store
        .put(&layout::model_manifest(&id), pkg.manifest_bytes())
        .await
        .unwrap();
}

/// Runs `n` workers on the queue until it is idle.
pub async fn drain<S, E>(worker: Arc<Worker<S, E>>, q: &MemQueue, n: usize)
where
    S: ObjectStore + 'static,
    E: ChunkEvaluator + 'static,
{
    let mut handles = Vec::new();
    for _ in 0..n {
        let (w, q) = (worker.clone(), q.clone());
        handles.push(tokio::spawn(async move {
            let idle = q.clone();
            let config = LoopConfig::for_visibility(q.visibility_timeout());
            run_queue_worker(&w, &q, &config, || idle.is_idle(), |_, _| {})
                .await
                .unwrap();
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

/// Receives everything currently visible, without acknowledging.
pub async fn receive_all(q: &MemQueue) -> Vec<fhe_batch_core::ports::Delivery> {
    let mut out = Vec::new();
    loop {
        let d = q.receive(10, Duration::ZERO).await.unwrap();
        if d.is_empty() {
            return out;
        }
        out.extend(d);
    }
}

/// The notifier tests use: keeps what it publishes, can fail the next publishes.
pub type Notifications = fhe_batch_core::pipeline::CollectingNotifier;
