//! Reliability at scale: duplicate and reordered delivery, crashes at every fault point, and
//! injected S3/SQS faults, each ending with every chunk's result present exactly once and
//! byte-identical to a fault-free run.
//!
//! Each test prints its figures (`-- --nocapture`); `FHE_BATCH_SCALE=N` multiplies the sizes for
//! longer runs (docs/RELIABILITY.md has the commands and the recorded figures).

use crate::common::*;
use fhe_batch_core::format::BatchLimits;
use fhe_batch_core::format::ResultHeader;
use fhe_batch_core::ids::JobId;
use fhe_batch_core::job::JobState;
use fhe_batch_core::layout;
use fhe_batch_core::pipeline::{
    ChunkOutcome, FaultPoint, FaultProbe, LoopConfig, Worker, WorkerConfig, ingest_object,
    job_status, run_queue_worker,
};
use fhe_batch_core::ports::{JobQueue, ObjectStore, PutOutcome, StoreError};
use fhe_batch_core::retry::{RetryPolicy, Retrying};
use fhe_batch_fhe::GlweEvaluator;
use fhe_batch_local::{Chaos, ChaosConfig, FsStore, MemQueue};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn scale() -> usize {
    std::env::var("FHE_BATCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// A store that counts result creations per key and refuses (panics on) any overwrite of a
/// result: the "no result overwritten, none written twice" witness.
#[derive(Clone)]
struct Witness<S> {
    inner: S,
    created: Arc<Mutex<HashMap<String, u32>>>,
}

impl<S> Witness<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            created: Arc::default(),
        }
    }
    fn creations(&self) -> HashMap<String, u32> {
        self.created.lock().unwrap().clone()
    }
}

impl<S: ObjectStore> ObjectStore for Witness<S> {
    async fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, StoreError> {
        self.inner.get(key, max).await
    }
    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.inner.get_range(key, start, len).await
    }
    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.inner.size(key).await
    }
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        assert!(
            !key.starts_with("results/"),
            "a result was written with an overwriting PUT: {key}"
        );
        self.inner.put(key, bytes).await
    }
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        let out = self.inner.put_if_absent(key, bytes).await;
        if key.starts_with("results/") && out == Ok(PutOutcome::Created) {
            *self.created.lock().unwrap().entry(key.into()).or_default() += 1;
        }
        out
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix).await
    }
}

/// Two different encrypted batches of `chunks` chunks each (copied under many job ids), and the
/// result bytes of a fault-free run of each, checked exactly against the plaintext model.
struct Reference {
    batches: [Vec<u8>; 2],
    results: [Vec<Vec<u8>>; 2],
}

async fn reference(chunks: usize) -> Reference {
    let records = chunks * 2048 - 100;
    let (a, qa) = iris_batch(records, 101);
    let (b, qb) = iris_batch(records, 102);
    let env = Env::new().await;
    let q = queue(Duration::from_secs(60));
    let mut results = [Vec::new(), Vec::new()];
    for (i, (bytes, quantized)) in [(&a, &qa), (&b, &qb)].into_iter().enumerate() {
        let job = env.upload(&format!("reference-{i}"), bytes.clone()).await;
        env.ingest(&q, &job).await;
        drain(env.worker(), &q, 2).await;
        env.assert_exact(&job, quantized).await;
        for c in 0..chunks as u32 {
            let key = layout::chunk_result(&job, c);
            results[i].push(env.store.get(&key, 1 << 30).await.unwrap());
        }
    }
    Reference {
        batches: [a, b],
        results,
    }
}

impl Reference {
    /// Uploads `jobs` jobs (alternating the two batches) and returns them with their batch index.
    async fn upload(&self, store: &FsStore, jobs: usize, prefix: &str) -> Vec<(JobId, usize)> {
        let mut out = Vec::new();
        for j in 0..jobs {
            let job = JobId::parse(&format!("{prefix}-{j:05}")).unwrap();
            store
                .put(&layout::inbox(&job), self.batches[j % 2].clone())
                .await
                .unwrap();
            out.push((job, j % 2));
        }
        out
    }

    /// Every job SUCCEEDED, with exactly its chunks' results, each byte-identical to the
    /// fault-free run; returns the number of chunks checked.
    async fn verify(&self, store: &FsStore, jobs: &[(JobId, usize)]) -> usize {
        let mut checked = 0;
        for (job, which) in jobs {
            let st = job_status(store, job).await.unwrap();
            assert_eq!(st.state, JobState::Succeeded, "{st:?}");
            let keys = store.list(&layout::results_prefix(job)).await.unwrap();
            assert_eq!(keys.len(), self.results[*which].len(), "{job}: {keys:?}");
            for (c, expected) in self.results[*which].iter().enumerate() {
                let got = store
                    .get(&layout::chunk_result(job, c as u32), 1 << 30)
                    .await
                    .unwrap();
                // Identical to the reference but for the binding, which names this job.
                let (gh, gb) = ResultHeader::decode(&got, 256).unwrap();
                let (eh, eb) = ResultHeader::decode(expected, 256).unwrap();
                assert!(
                    gh.binding.is_some_and(|b| b.is_for_job(job)),
                    "{job} chunk {c}"
                );
                assert_eq!(
                    gh.binding.map(|b| b.batch_header_sha256),
                    eh.binding.map(|b| b.batch_header_sha256)
                );
                let unbound = |h: ResultHeader| ResultHeader { binding: None, ..h };
                assert!(
                    unbound(gh) == unbound(eh) && gb == eb,
                    "{job} chunk {c} differs from the reference"
                );
                checked += 1;
            }
        }
        checked
    }
}

/// Ingests every job into a staging queue and returns the chunk message bodies.
async fn chunk_messages<S: ObjectStore>(store: &S, jobs: &[(JobId, usize)]) -> Vec<String> {
    let staging = queue(Duration::from_secs(600));
    for (job, _) in jobs {
        ingest_object(
            store,
            &staging,
            &layout::inbox(job),
            &BatchLimits::default(),
        )
        .await
        .unwrap();
    }
    receive_all(&staging)
        .await
        .into_iter()
        .map(|d| d.body)
        .collect()
}

#[derive(Default)]
struct Tally {
    written: AtomicU64,
    already_done: AtomicU64,
    other: AtomicU64,
}

impl Tally {
    fn count(&self, o: &ChunkOutcome) {
        match o {
            ChunkOutcome::Written { .. } => &self.written,
            ChunkOutcome::AlreadyDone { .. } => &self.already_done,
            _ => &self.other,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `n` concurrent workers on `q` until `idle` (the queue under any wrappers) is empty.
async fn run_workers<S, Q>(
    worker: Arc<Worker<S, GlweEvaluator>>,
    q: Q,
    idle: MemQueue,
    n: usize,
    tally: Arc<Tally>,
) where
    S: ObjectStore + 'static,
    Q: JobQueue + Clone + 'static,
{
    let mut handles = Vec::new();
    for _ in 0..n {
        let (w, q, t, idle) = (worker.clone(), q.clone(), tally.clone(), idle.clone());
        handles.push(tokio::spawn(async move {
            let config = LoopConfig::for_visibility(idle.visibility_timeout());
            run_queue_worker(&w, &q, &config, || idle.is_idle(), |o, _| t.count(o))
                .await
                .unwrap();
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicated_and_reordered_delivery_gives_exactly_one_result_per_chunk() {
    let chunks_per_job = 16;
    let jobs_n = 640 * scale(); // 10,240 chunks at scale 1
    let reference = reference(chunks_per_job).await;
    let env = Env::new().await;
    let jobs = reference.upload(&env.store, jobs_n, "dup").await;
    let bodies = chunk_messages(&env.store, &jobs).await;
    assert_eq!(bodies.len(), jobs_n * chunks_per_job);

    // Each message 1 to 3 times, all shuffled together.
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let mut deliveries: Vec<String> = Vec::new();
    for b in &bodies {
        for _ in 0..rng.gen_range(1..=3) {
            deliveries.push(b.clone());
        }
    }
    deliveries.shuffle(&mut rng);
    let sent = deliveries.len();
    let q = queue(Duration::from_secs(600));
    for part in deliveries.chunks(1000) {
        q.send_batch(part.to_vec()).await.unwrap();
    }

    let store = Witness::new(env.store.clone());
    let worker = Arc::new(Worker::new(
        store.clone(),
        GlweEvaluator,
        WorkerConfig::default(),
    ));
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    run_workers(worker, q.clone(), q.clone(), 8, tally.clone()).await;
    let elapsed = started.elapsed();

    let creations = store.creations();
    assert_eq!(creations.len(), bodies.len(), "one result per chunk");
    assert!(
        creations.values().all(|&n| n == 1),
        "a result created twice"
    );
    assert_eq!(tally.written.load(Ordering::Relaxed), bodies.len() as u64);
    assert_eq!(
        tally.already_done.load(Ordering::Relaxed),
        (sent - bodies.len()) as u64
    );
    assert_eq!(tally.other.load(Ordering::Relaxed), 0);
    let checked = reference.verify(&env.store, &jobs).await;
    eprintln!(
        "duplicate delivery: {} chunk messages ({} jobs) delivered {sent} times in random order \
         to 8 concurrent workers in {:.1} s: {} results written once each, {} duplicates \
         answered from the existing result, {checked} results byte-identical to the reference, \
         0 lost, 0 overwritten",
        bodies.len(),
        jobs.len(),
        elapsed.as_secs_f64(),
        tally.written.load(Ordering::Relaxed),
        tally.already_done.load(Ordering::Relaxed),
    );
}

/// Strikes once per job at the job's fault point, as an error or as a panic (a crash).
struct OneFaultPerJob {
    plan: HashMap<JobId, (FaultPoint, bool)>,
    struck: Mutex<HashSet<JobId>>,
    errors: AtomicU64,
    panics: AtomicU64,
}

impl FaultProbe for OneFaultPerJob {
    fn check(&self, point: FaultPoint, job: &JobId, _chunk: u32) -> Result<(), String> {
        let Some(&(at, panic)) = self.plan.get(job) else {
            return Ok(());
        };
        if at != point || !self.struck.lock().unwrap().insert(job.clone()) {
            return Ok(());
        }
        if panic {
            self.panics.fetch_add(1, Ordering::Relaxed);
            panic!("injected crash at {point:?} for {job}");
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        Err(format!("injected error at {point:?}"))
    }
}

/// Keeps the expected panics' messages out of the test output; every other panic is reported.
fn quiet_injected_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.starts_with("injected crash"));
        if !injected {
            default(info)
        }
    }));
}

/// Runs `n` workers; a worker that panics is restarted (as Lambda starts a new environment
/// after a crash), and its message comes back after the visibility timeout.
async fn supervised_drain<S: ObjectStore + 'static>(
    worker: Arc<Worker<S, GlweEvaluator>>,
    q: &MemQueue,
    n: usize,
    tally: Arc<Tally>,
) -> u64 {
    let crashes = Arc::new(AtomicU64::new(0));
    let mut slots = Vec::new();
    for _ in 0..n {
        let (w, q, t, crashes) = (worker.clone(), q.clone(), tally.clone(), crashes.clone());
        slots.push(tokio::spawn(async move {
            loop {
                let (w, q, t) = (w.clone(), q.clone(), t.clone());
                let run = tokio::spawn(async move {
                    let idle = q.clone();
                    let config = LoopConfig::for_visibility(q.visibility_timeout());
                    run_queue_worker(&w, &q, &config, || idle.is_idle(), |o, _| t.count(o)).await
                });
                match run.await {
                    Ok(r) => return r.unwrap(),
                    Err(e) if e.is_panic() => {
                        crashes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for s in slots {
        s.await.unwrap();
    }
    crashes.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashes_and_errors_at_every_fault_point_lose_and_duplicate_nothing() {
    let jobs_n = 1000 * scale();
    let reference = reference(1).await;
    let env = Env::new().await;
    let jobs = reference.upload(&env.store, jobs_n, "crash").await;
    let kinds: Vec<(FaultPoint, bool)> = FaultPoint::ALL
        .iter()
        .flat_map(|&p| [(p, false), (p, true)])
        .collect();
    let probe = Arc::new(OneFaultPerJob {
        plan: jobs
            .iter()
            .enumerate()
            .map(|(i, (job, _))| (job.clone(), kinds[i % kinds.len()]))
            .collect(),
        struck: Mutex::default(),
        errors: AtomicU64::new(0),
        panics: AtomicU64::new(0),
    });
    let q = queue(Duration::from_millis(300));
    for (job, _) in &jobs {
        env.ingest(&q, job).await;
    }
    let store = Witness::new(env.store.clone());
    let worker = Arc::new(
        Worker::new(store.clone(), GlweEvaluator, WorkerConfig::default())
            .with_probe(probe.clone()),
    );
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    quiet_injected_panics();
    let crashes = supervised_drain(worker, &q, 8, tally.clone()).await;
    let elapsed = started.elapsed();

    assert_eq!(
        probe.struck.lock().unwrap().len(),
        jobs_n,
        "every job was hit"
    );
    assert_eq!(crashes, probe.panics.load(Ordering::Relaxed));
    assert_eq!(crashes as usize, jobs_n / 2);
    assert_eq!(q.dead_letters().len(), 0);
    let creations = store.creations();
    assert_eq!(creations.len(), jobs_n);
    assert!(creations.values().all(|&n| n == 1));
    let checked = reference.verify(&env.store, &jobs).await;
    eprintln!(
        "fault points: {jobs_n} jobs, one fault each at {} points x (error, panic): {} errors, \
         {crashes} crashes; {} results written and {} redeliveries answered from an existing \
         result in {:.1} s; {checked} results present once and byte-identical to the \
         reference: 0 lost, 0 duplicated",
        FaultPoint::ALL.len(),
        probe.errors.load(Ordering::Relaxed),
        tally.written.load(Ordering::Relaxed),
        tally.already_done.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_percent_injected_storage_and_queue_faults_lose_nothing() {
    let jobs_n = 300 * scale();
    let chunks_per_job = 2;
    let reference = reference(chunks_per_job).await;
    let env = Env::new().await;
    let jobs = reference.upload(&env.store, jobs_n, "chaos").await;
    let chaos = |seed| ChaosConfig {
        rate: 0.2,
        timeout: Duration::from_millis(20),
        seed,
    };
    let witness = Witness::new(env.store.clone());
    let store = Retrying::new(
        Chaos::new(witness.clone(), chaos(1)),
        RetryPolicy::default(),
    );
    let mem = queue(Duration::from_secs(2));
    let q = Retrying::new(Chaos::new(mem.clone(), chaos(2)), RetryPolicy::default());

    let started = Instant::now();
    let mut ingests = Vec::new();
    for (job, _) in &jobs {
        let (store, q, key) = (store.clone(), q.clone(), layout::inbox(job));
        // Ingest is retried by its trigger when it reports trouble (S3 retries the event).
        ingests.push(tokio::spawn(async move {
            while ingest_object(&store, &q, &key, &BatchLimits::default())
                .await
                .is_err()
            {}
        }));
    }
    for i in ingests {
        i.await.unwrap();
    }
    let worker = Arc::new(Worker::new(
        store.clone(),
        GlweEvaluator,
        WorkerConfig::default(),
    ));
    let tally = Arc::new(Tally::default());
    run_workers(worker, q.clone(), mem.clone(), 8, tally.clone()).await;
    let elapsed = started.elapsed();

    assert_eq!(mem.dead_letters().len(), 0);
    let creations = witness.creations();
    assert_eq!(creations.len(), jobs_n * chunks_per_job);
    assert!(creations.values().all(|&n| n == 1));
    let checked = reference.verify(&env.store, &jobs).await;
    let policy = RetryPolicy::default();
    for (name, chaos, retry) in [
        ("S3", store.inner().stats(), store.stats()),
        ("SQS", q.inner().stats(), q.stats()),
    ] {
        let calls = chaos.calls.load(Ordering::Relaxed);
        let faults = chaos.faults();
        let max_calls = retry.max_calls.load(Ordering::Relaxed);
        assert!(calls > 1000, "{name}: {calls}");
        let rate = faults as f64 / calls as f64;
        assert!((0.17..0.23).contains(&rate), "{name}: {rate}");
        assert!(max_calls <= policy.max_attempts);
        eprintln!(
            "injected faults, {name}: {calls} calls, {faults} faults ({:.1}%: {} throttled, {} \
             500s, {} timeouts, {} resets; {} after the work was done), {} retries, at most \
             {max_calls} calls per operation, {} operations out of attempts (left for \
             redelivery), {:.1} s of backoff in all",
            rate * 100.0,
            chaos.throttled.load(Ordering::Relaxed),
            chaos.server_errors.load(Ordering::Relaxed),
            chaos.timeouts.load(Ordering::Relaxed),
            chaos.resets.load(Ordering::Relaxed),
            chaos.applied_then_failed.load(Ordering::Relaxed),
            retry.retries.load(Ordering::Relaxed),
            retry.exhausted.load(Ordering::Relaxed),
            retry.backoff_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
    }
    eprintln!(
        "injected faults: {jobs_n} jobs, {checked} chunk results byte-identical to the reference \
         in {:.1} s: 0 lost, 0 duplicated, 0 dead-lettered",
        elapsed.as_secs_f64()
    );
}
