//! Neural networks through the pipeline core: an imported scikit-learn MLP (breast cancer,
//! 30-32-1 with its scaler) is compiled, its evaluation key published, a batch encrypted,
//! ingested, worked by two workers and decrypted; every decrypted score is within the proven
//! error of the integer reference and the predicted classes agree with it.

use crate::common::*;
use fhe_batch_core::format::ChunkLayout;
use fhe_batch_core::job::JobState;
use fhe_batch_core::layout;
use fhe_batch_core::pipeline::{IngestOutcome, Worker, WorkerConfig};
use fhe_batch_core::ports::ObjectStore;
use fhe_batch_fhe::FheEvaluator;
use fhe_batch_fhe::forest::{EvalKey, eval_key_id};
use fhe_batch_train::import::{ImportData, ImportOptions};
use fhe_batch_train::mlp::compile_mlp;
use std::sync::Arc;
use std::time::Duration;

fn onnx(name: &str) -> fhe_batch_onnx::Mlp {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/onnx");
    let bytes = std::fs::read(dir.join(name)).unwrap();
    let fhe_batch_onnx::FloatModel::Mlp(m) = fhe_batch_onnx::import_onnx(&bytes).unwrap().model
    else {
        panic!("a network")
    };
    m
}

#[tokio::test]
async fn an_mlp_job_decrypts_within_the_proven_error_of_the_reference() {
    let ds = fhe_batch_train::data::read_labelled_csv(
        &data_path("breast_cancer.csv"),
        "label",
        fhe_batch_train::Task::Auto,
    )
    .unwrap();
    let (calibration, eval) = ds.split(0.2, 42);
    let c = compile_mlp(
        &onnx("bc-mlp-30-32-2.onnx"),
        ImportData {
            all: &ds,
            calibration: &calibration,
            eval: &eval,
            evaluated_on: "holdout",
        },
        &ImportOptions::default(),
    )
    .unwrap();
    assert!(c.summary.report.quantized_score > 0.9, "{:?}", c.summary);
    assert_eq!(c.summary.pbs_per_record, 32);
    let pkg = c.package;
    let env = Env::new().await;
    publish(&env.store, &pkg).await;
    let key_bytes = EvalKey::generate(key()).to_bytes();
    let id = eval_key_id(&key_bytes);
    env.store
        .put(&layout::eval_key(&id), key_bytes)
        .await
        .unwrap();
    let rows: Vec<Vec<f64>> = (0..24).map(|i| eval.row(i).to_vec()).collect();
    let cols: Vec<u64> = rows.iter().flat_map(|r| pkg.client.columns(r)).collect();
    let batch = fhe_batch_fhe::batch::encrypt_batch_with(
        key(),
        &pkg.client,
        pkg.manifest.model_id,
        &cols,
        ChunkLayout {
            records_per_chunk: 8,
            eval_key: Some(id),
        },
        &|_| {},
    );
    let q = queue(Duration::from_secs(60));
    let job = env.upload("mlp", batch).await;
    let outcome = env.ingest(&q, &job).await;
    assert!(
        matches!(outcome, IngestOutcome::Queued { chunks: 3, .. }),
        "{outcome:?}"
    );
    let worker = Arc::new(Worker::new(
        env.store.clone(),
        FheEvaluator::new(None),
        WorkerConfig { max_receives: 5 },
    ));
    drain(worker, &q, 2).await;
    let st = env.status(&job).await;
    assert_eq!(st.state, JobState::Succeeded, "{st:?}");
    let mut files = Vec::new();
    for k in env.store.list(&layout::results_prefix(&job)).await.unwrap() {
        files.push((k.clone(), env.store.get(&k, 1 << 30).await.unwrap()));
    }
    let scores = fhe_batch_fhe::batch::decrypt_job(
        key(),
        &pkg.client,
        &pkg.manifest.model_id,
        &files,
        &|_| {},
    )
    .unwrap();
    let fhe_batch_core::model::ServerBody::NeuralNetwork(server) = &pkg.server.body else {
        panic!("a network")
    };
    let bound = c.proof.score_error[0];
    let mut agree = 0;
    for (r, &got) in rows.iter().zip(&scores) {
        let want = server.eval_plain(&pkg.client.columns(r))[0];
        assert!(
            ((got - want) as f64).abs() <= bound,
            "decrypted {got}, reference {want}, proven bound {bound}"
        );
        agree += usize::from(pkg.client.predict(&[got]).class == pkg.client.predict(&[want]).class);
    }
    eprintln!(
        "{agree}/{} predictions agree with the integer reference",
        rows.len()
    );
    assert!(agree >= rows.len() - 1, "{agree}/{}", rows.len());
}
