//! Public-key batches through the pipeline: a producer that holds only the owner's public key
//! encrypts, the service evaluates, the owner decrypts exactly; models not proven for such
//! batches are refused with the reason.

use crate::common::*;
use fhe_batch_core::format::{BatchHeader, BatchLimits, ChunkLayout};
use fhe_batch_core::job::{FailureKind, JobState};
use fhe_batch_core::layout;
use fhe_batch_core::params::{Encryption, ParamSet};
use fhe_batch_core::pipeline::IngestOutcome;
use fhe_batch_core::ports::ObjectStore;
use fhe_batch_fhe::PublicKey;
use std::time::Duration;

/// The owner's public key, as a producer receives it (through its file).
fn producer_key() -> PublicKey {
    PublicKey::from_bytes(&PublicKey::generate(key(), None).to_bytes()).unwrap()
}

fn public_iris_batch(n: usize, seed: u64) -> (Vec<u8>, Vec<u64>) {
    let pkg = iris_package();
    let q = quantize(pkg, &iris().synthesize(n, seed));
    let pk = producer_key();
    let bytes = fhe_batch_fhe::batch::encrypt_batch_with(
        &pk,
        &pkg.client,
        pkg.manifest.model_id,
        &q,
        ChunkLayout::full(ParamSet::Glwe2048TUniform17),
        &|_| {},
    );
    (bytes, q)
}

#[tokio::test]
async fn a_public_key_batch_runs_end_to_end_and_decrypts_exactly() {
    let env = Env::new().await;
    assert!(iris_package().manifest.public_key_batches);
    let (bytes, q) = public_iris_batch(5000, 7);
    let header = BatchHeader::parse(&bytes, &BatchLimits::default()).unwrap();
    assert_eq!(header.encryption, Encryption::PublicKey);
    assert_eq!(header.key_fingerprint, key().fingerprint());
    // Whole GLWEs travel: 4 columns x 2 x 2048 words per chunk of 2,048 records, twice the
    // seeded size.
    assert_eq!(header.chunks[0].length, 4 * 2 * 2048 * 8);
    let job = env.upload("from-a-clinic", bytes).await;
    let queue = queue(Duration::from_secs(60));
    assert!(matches!(
        env.ingest(&queue, &job).await,
        IngestOutcome::Queued { chunks: 3, .. }
    ));
    drain(env.worker(), &queue, 2).await;
    env.assert_exact(&job, &q).await;
}

/// A model compiled before public-key batches existed (its manifest does not say it was
/// proven for them) refuses such a batch at ingest, with the reason and what to do; its
/// secret-key batches still run.
#[tokio::test]
async fn a_model_not_proven_for_public_key_batches_fails_the_job_with_the_reason() {
    let env = Env::new().await;
    let pkg = iris_package();
    let mut manifest: serde_json::Value = serde_json::from_slice(&pkg.manifest_bytes()).unwrap();
    manifest
        .as_object_mut()
        .unwrap()
        .remove("public_key_batches");
    env.store
        .put(
            &layout::model_manifest(&pkg.manifest.model_id),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .await
        .unwrap();
    let queue = queue(Duration::from_secs(60));
    let (bytes, _) = public_iris_batch(100, 8);
    let job = env.upload("old-model", bytes).await;
    let outcome = env.ingest(&queue, &job).await;
    assert!(
        matches!(&outcome, IngestOutcome::Rejected { reason, .. } if reason.contains("not proven for public-key batches") && reason.contains("recompile")),
        "{outcome:?}"
    );
    let st = env.status(&job).await;
    assert_eq!(st.state, JobState::Failed);
    assert_eq!(st.failures[0].kind, FailureKind::Model);
    let (bytes, q) = iris_batch(100, 9);
    let job = env.upload("secret-key", bytes).await;
    env.ingest(&queue, &job).await;
    drain(env.worker(), &queue, 1).await;
    env.assert_exact(&job, &q).await;
}
