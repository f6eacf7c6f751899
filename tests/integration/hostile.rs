//! Hostile input: every truncation and 10,000 random bit flips of a valid batch are refused with
//! a typed error; the fuzz seeds and the committed hostile corpus are replayed through the fuzz
//! targets' code; an oversized upload is refused from its header without reading its body.

use crate::common::*;
use fhe_batch_core::format::{BatchHeader, BatchLimits, FIXED_HEADER_LEN, FormatError};
use fhe_batch_core::fuzz;
use fhe_batch_core::layout;
use fhe_batch_core::pipeline::{IngestOutcome, ingest_object};
use fhe_batch_core::ports::{JobQueue, ObjectStore, PutOutcome, StoreError};
use fhe_batch_local::FsStore;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[test]
fn every_truncation_and_ten_thousand_bit_flips_of_a_batch_are_refused() {
    let (bytes, _) = iris_batch(3000, 31); // two chunks
    let limits = BatchLimits::default();
    let header = fuzz::validate_batch(&bytes, &limits).expect("the valid batch passes");
    assert_eq!(header.chunks.len(), 2);
    for len in 0..bytes.len() {
        let e = fuzz::validate_batch(&bytes[..len], &limits).expect_err("a truncation passed");
        assert!(
            matches!(
                e,
                FormatError::Truncated { .. }
                    | FormatError::SizeMismatch { .. }
                    | FormatError::BadMagic { .. }
            ),
            "cut at {len}: {e}"
        );
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let mut in_header = 0;
    for _ in 0..10_000 {
        let mut flipped = bytes.clone();
        let bit = rng.gen_range(0..bytes.len() * 8);
        flipped[bit / 8] ^= 1 << (bit % 8);
        let e = fuzz::validate_batch(&flipped, &limits).expect_err("a bit flip passed");
        if (bit / 8) < header.header_len() as usize {
            in_header += 1;
        } else {
            assert_eq!(e, FormatError::Checksum { what: "chunk" }, "bit {bit}");
        }
    }
    assert!(in_header > 0);
}

fn corpus_dirs(target: &str) -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    vec![
        root.join("fuzz/seeds").join(target),
        root.join("tests/fixtures/hostile").join(target),
    ]
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"));
    out.sort();
    out
}

#[test]
fn fuzz_seeds_and_hostile_corpus_replay_cleanly() {
    type Target = fn(&[u8]);
    let targets: [(&str, Target); 10] = [
        ("batch", fuzz::batch),
        ("chunk", fuzz::chunk),
        ("result", fuzz::result),
        ("model", fuzz::model),
        ("s3_event", fuzz::s3_event),
        ("sqs_body", fuzz::sqs_body),
        ("job_id", fuzz::job_id),
        ("key_file", |data| {
            if let Ok(key) = fhe_batch_fhe::SecretKey::from_bytes(data) {
                let again = fhe_batch_fhe::SecretKey::from_bytes(&key.to_bytes()).unwrap();
                assert_eq!(again.to_bytes(), key.to_bytes());
                if data[8..10] == [2, 0] {
                    assert_eq!(key.to_bytes(), data);
                }
            }
        }),
        ("public_key", |data| {
            if let Ok(key) = fhe_batch_fhe::PublicKey::from_bytes(data) {
                assert_eq!(key.to_bytes(), data);
            }
        }),
        ("onnx", |data| {
            if let Ok(imported) = fhe_batch_onnx::import_onnx(data) {
                let x = vec![0.5f32; imported.model.n_features()];
                let _ = imported.model.predict(&x);
                // A pipeline's client-side preprocessing, on a complete record and on one with a hole.
                let mut raw = vec![0.5f64; imported.raw_features()];
                let _ = imported.predict_raw(&raw);
                if let Some(v) = raw.first_mut() {
                    *v = f64::NAN;
                }
                let _ = imported.predict_raw(&raw);
            }
        }),
    ];
    let mut replayed = 0;
    for (target, run) in targets {
        let inputs: Vec<PathBuf> = corpus_dirs(target).iter().flat_map(|d| files(d)).collect();
        assert!(!inputs.is_empty(), "no corpus for {target}");
        for path in inputs {
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} panicked", path.display());
            replayed += 1;
        }
    }
    assert!(replayed >= 30, "{replayed}");
}

/// The hostile corpus is refused, each file with a typed error from the reader it targets.
#[test]
fn hostile_corpus_is_refused_by_its_reader() {
    let limits = BatchLimits::default();
    for path in files(&corpus_dirs("batch")[1]) {
        let data = std::fs::read(&path).unwrap();
        assert!(
            fuzz::validate_batch(&data, &limits).is_err(),
            "{}",
            path.display()
        );
    }
    for path in files(&corpus_dirs("sqs_body")[1]) {
        let body = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        assert!(
            fhe_batch_core::job::ChunkMessage::parse(&body).is_err(),
            "{}",
            path.display()
        );
    }
    for path in files(&corpus_dirs("job_id")[1]) {
        let id = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        assert!(
            fhe_batch_core::ids::JobId::parse(&id).is_err(),
            "{}",
            path.display()
        );
    }
    for path in files(&corpus_dirs("key_file")[1]) {
        let data = std::fs::read(&path).unwrap();
        assert!(
            fhe_batch_fhe::SecretKey::from_bytes(&data).is_err(),
            "{}",
            path.display()
        );
    }
    for path in files(&corpus_dirs("s3_event")[1]) {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or(serde_json::Value::Null);
        if let fhe_batch_core::events::S3Notification::Objects { keys, .. } =
            fhe_batch_core::events::s3_notification(&v, "bucket")
        {
            for key in keys {
                assert!(
                    layout::job_of_inbox_key(&key).is_err(),
                    "{}: {key}",
                    path.display()
                );
            }
        }
    }
}

/// Counts the bytes read from the store.
#[derive(Clone)]
struct ReadMeter {
    inner: FsStore,
    read: Arc<AtomicU64>,
}

impl ObjectStore for ReadMeter {
    async fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, StoreError> {
        let b = self.inner.get(key, max).await?;
        if key.starts_with("inbox/") {
            self.read.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        Ok(b)
    }
    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let b = self.inner.get_range(key, start, len).await?;
        self.read.fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b)
    }
    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.inner.size(key).await
    }
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.inner.put(key, bytes).await
    }
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        self.inner.put_if_absent(key, bytes).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix).await
    }
}

#[tokio::test]
async fn an_oversized_upload_is_refused_from_its_header_without_reading_the_body() {
    let env = Env::new().await;
    let (bytes, _) = iris_batch(40_000, 32); // 20 chunks, 1.3 MB
    let header = BatchHeader::parse(&bytes, &BatchLimits::default()).unwrap();
    let job = env.upload("oversized", bytes.clone()).await;
    let meter = ReadMeter {
        inner: env.store.clone(),
        read: Arc::default(),
    };
    let q = queue(Duration::from_secs(60));
    let limits = BatchLimits {
        max_records: 10_000,
        ..BatchLimits::default()
    };
    let outcome = ingest_object(&meter, &q, &layout::inbox(&job), &limits)
        .await
        .unwrap();
    let IngestOutcome::Rejected { reason, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("exceeds the limit"), "{reason}");
    // The fixed prefix, then the header: 1,280 of 1,312,256 bytes.
    let read = meter.read.load(Ordering::Relaxed);
    assert_eq!(read, FIXED_HEADER_LEN as u64 + header.header_len());
    assert!(read * 100 < bytes.len() as u64);
    assert!(q.is_idle(), "nothing queued");
    // And by object size alone: the header is never read.
    let meter = ReadMeter {
        inner: env.store.clone(),
        read: Arc::default(),
    };
    let job = env.upload("too-many-bytes", bytes.clone()).await;
    let limits = BatchLimits {
        max_batch_bytes: 1 << 20,
        ..BatchLimits::default()
    };
    let outcome = ingest_object(&meter, &q, &layout::inbox(&job), &limits)
        .await
        .unwrap();
    assert!(
        matches!(outcome, IngestOutcome::Rejected { .. }),
        "{outcome:?}"
    );
    assert_eq!(meter.read.load(Ordering::Relaxed), 0);
}

/// Writes the fuzz seeds from real files (run once; the seeds are committed):
/// `cargo test --release -p fhe-batch-tests --test integration write_fuzz_seeds -- --ignored`
#[tokio::test]
#[ignore]
async fn write_fuzz_seeds() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let (bytes, _) = iris_batch(100, 33);
    let header = BatchHeader::parse(&bytes, &BatchLimits::default()).unwrap();
    write("batch", "iris-100.fheb", &bytes);
    write(
        "batch",
        "header-only",
        &bytes[..header.header_len() as usize],
    );
    let c = &header.chunks[0];
    let mut chunk = c.sha256.to_vec();
    chunk.extend_from_slice(&bytes[c.offset as usize..][..256]);
    write("chunk", "prefix", &chunk);
    let pkg = iris_package();
    write("model", "manifest.json", &pkg.manifest_bytes());
    write("model", "server.bin", &pkg.server_bytes);
    write("model", "client.json", &pkg.client_bytes);
    let tree = crate::trees::tree_package();
    write("model", "tree-manifest.json", &tree.manifest_bytes());
    write("model", "tree-server.bin", &tree.server_bytes);
    write("model", "tree-client.json", &tree.client_bytes);
    let mlp = crate::mlp::small_package();
    write("model", "mlp-manifest.json", &mlp.manifest_bytes());
    write("model", "mlp-server.bin", &mlp.server_bytes);
    write("model", "mlp-client.json", &mlp.client_bytes);
    // A throwaway key generated by the tests, not anyone's secret, and its public key.
    // (`test-key.bin` beside it is a version-1 key file, kept as it is: the key tests load it.)
    write("key_file", "test-key-v2.bin", &key().to_bytes());
    let public = fhe_batch_fhe::PublicKey::generate(key(), Some(crate::trees::key_id()));
    write("public_key", "test-key.pub", &public.to_bytes());
    // A public-key batch (format version 3): its header, and its chunk message below.
    let pk_bytes = fhe_batch_fhe::batch::encrypt_batch_with(
        &public,
        &pkg.client,
        pkg.manifest.model_id,
        &quantize(pkg, &iris().synthesize(20, 34)),
        fhe_batch_core::format::ChunkLayout::full(pkg.client.params),
        &|_| {},
    );
    let pk_header = BatchHeader::parse(&pk_bytes, &BatchLimits::default()).unwrap();
    write(
        "batch",
        "public-key-header-only",
        &pk_bytes[..pk_header.header_len() as usize],
    );
    let events = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/events");
    for name in ["s3-put.json", "s3-test-event.json"] {
        write("s3_event", name, &std::fs::read(events.join(name)).unwrap());
    }
    for (name, id) in [("plain", "claims-2026-11"), ("dots", "a.b_c-d")] {
        write("job_id", name, id.as_bytes());
    }
    // A chunk message and a result file from a real run.
    let env = Env::new().await;
    let job = env.upload("seed", bytes.clone()).await;
    let q = queue(Duration::from_secs(60));
    env.ingest(&q, &job).await;
    let d = receive_all(&q).await;
    write("sqs_body", "chunk-0.json", d[0].body.as_bytes());
    q.send_batch(vec![d[0].body.clone()]).await.unwrap();
    for x in d {
        q.ack(&x.receipt).await.unwrap();
    }
    drain(env.worker(), &q, 1).await;
    let result = env
        .store
        .get(&layout::chunk_result(&job, 0), 1 << 30)
        .await
        .unwrap();
    write("result", "chunk-0.fher", &result);
    let job = env.upload("seed-pk", pk_bytes).await;
    env.ingest(&q, &job).await;
    let d = receive_all(&q).await;
    write("sqs_body", "public-key-chunk-0.json", d[0].body.as_bytes());
}

/// A batch naming a parameter set outside the allow-list (its header checksum recomputed, so
/// only the parameter check can catch it) fails at ingest, before any work is queued.
#[tokio::test]
async fn the_service_refuses_parameter_sets_outside_the_allow_list() {
    let env = Env::new().await;
    let q = queue(Duration::from_secs(60));
    let dir = &corpus_dirs("batch")[1];
    for (name, id) in [("other-params-rehashed", 2), ("params-zero-rehashed", 0)] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let job = env.upload(name, bytes).await;
        let outcome = env.ingest(&q, &job).await;
        let IngestOutcome::Rejected { reason, .. } = outcome else {
            panic!("{name}: {outcome:?}")
        };
        assert!(
            reason.contains(&format!(
                "parameter set {id} is not one of the allowed 128-bit parameter sets"
            )),
            "{reason}"
        );
    }
    assert!(q.is_idle());
    assert_eq!(fhe_batch_core::params::ParamSet::ALL.len(), 1);
}
