//! `fhe-batch demo --model mlp`: a neural network on encrypted MNIST digits, end to end on the
//! local bucket. The model owner imports the bundled scikit-learn network (784-128-10, ReLU,
//! exported to ONNX) and compiles it on 8,000 digits; the data owner generates a key, publishes
//! the evaluation key, encrypts test digits; the local pipeline bootstraps every hidden neuron
//! of every digit; the data owner decrypts and checks the predictions against the labels, the
//! float network and the integer reference, and sees a few digits drawn beside them.

use crate::local::{bar, run_local};
use crate::output::{bytes, dur, status_line, write_predictions};
use crate::store;
use anyhow::{Context, Result, bail};
use fhe_batch_core::budget::ChunkBudget;
use fhe_batch_core::format::ChunkLayout;
use fhe_batch_core::ids::JobId;
use fhe_batch_core::job::JobState;
use fhe_batch_core::layout;
use fhe_batch_core::model::ServerBody;
use fhe_batch_core::params::ParamSet;
use fhe_batch_core::pipeline::job_status;
use fhe_batch_core::ports::ObjectStore;
use fhe_batch_fhe::SecretKey;
use fhe_batch_fhe::forest::{EvalKey, eval_key_id};
use fhe_batch_local::FsStore;
use fhe_batch_train::data::{Target, read_labelled_csv};
use fhe_batch_train::import::{ImportData, ImportOptions};
use fhe_batch_train::{Dataset, Task};
use std::time::{Duration, Instant};

/// The bundled network: scikit-learn `MLPClassifier(128)` on 8,000 MNIST digits, behind a
/// scaler dividing pixels by 255, exported by `infra/export_models.py`.
pub const MNIST_MLP_ONNX: &[u8] =
    include_bytes!("../../../tests/fixtures/onnx/mnist-mlp-784-128-10.onnx");
/// 10,000 MNIST digits (CC BY-SA 3.0, see data/README.md): the first 8,000 train, the rest
/// test.
pub const MNIST_CSV_GZ: &[u8] = include_bytes!("../../../data/mnist-10k.csv.gz");
/// Digits that calibrate the compile.
const CALIBRATION_ROWS: usize = 8000;
/// Digits drawn beside their predictions.
const DRAWN: usize = 4;

/// Runs the network demo on `records` test digits with `workers` workers in `dir`.
pub fn run(records: usize, workers: usize, dir: &std::path::Path) -> Result<()> {
    if !(1..=2000).contains(&records) {
        bail!("--records must be between 1 and 2,000 test digits for --model mlp");
    }
    let total = Instant::now();
    let mut phases: Vec<(&str, Duration)> = Vec::new();
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let job = JobId::parse("mnist-demo").expect("valid");
    println!(
        "fhe-batch demo: a neural network on encrypted MNIST digits, end to end, on a local bucket"
    );
    println!("working directory {}\n", dir.display());

    println!(
        "[1/6] import and compile the bundled network (784-128-10, ReLU; scikit-learn via ONNX)"
    );
    let t = Instant::now();
    let data_path = dir.join("mnist-10k.csv.gz");
    std::fs::write(&data_path, MNIST_CSV_GZ)?;
    let all = read_labelled_csv(&data_path, "label", Task::Classification)?;
    let calibration = all.select(&(0..CALIBRATION_ROWS).collect::<Vec<_>>());
    let test = all.select(&(CALIBRATION_ROWS..all.len()).collect::<Vec<_>>());
    let imported = fhe_batch_onnx::import_onnx(MNIST_MLP_ONNX)?;
    let fhe_batch_onnx::FloatModel::Mlp(mlp) = &imported.model else {
        bail!("the bundled network did not import as one");
    };
    let compiled = fhe_batch_train::mlp::compile_mlp(
        mlp,
        ImportData {
            all: &all,
            calibration: &calibration,
            eval: &test,
            evaluated_on: "test digits",
        },
        &ImportOptions::default(),
    )?;
    let mut summary = compiled.summary.clone();
    let pbs = summary.pbs_per_record;
    summary.records_per_chunk = ChunkBudget::default().records_per_chunk(pbs, 2048);
    crate::cmd::import::print_mlp(&summary, "test");
    let pkg = compiled.package;
    let model_dir = dir.join("model");
    store::write_model_dir(&pkg, &model_dir)?;
    phases.push(("import + compile", t.elapsed()));

    println!("\n[2/6] generate the data owner's secret key and its evaluation key");
    let t = Instant::now();
    let key = SecretKey::generate(ParamSet::Glwe2048TUniform17);
    let key_path = dir.join("client.key");
    key.save(&key_path, true)?;
    let eval_key = EvalKey::generate(&key).to_bytes();
    let eval_id = eval_key_id(&eval_key);
    phases.push(("keygen + evaluation key", t.elapsed()));
    println!(
        "  {} (owner-only), fingerprint {}; evaluation key {eval_id} ({}, public: it lets the service compute, not decrypt)",
        key_path.display(),
        key.fingerprint(),
        bytes(eval_key.len() as u64)
    );

    println!("\n[3/6] encrypt the first {records} test digits");
    let t = Instant::now();
    let columns: Vec<u64> = (0..records)
        .flat_map(|i| pkg.client.columns(test.row(i)))
        .collect();
    let layout = ChunkLayout {
        records_per_chunk: summary
            .records_per_chunk
            .min(records.div_ceil(workers.max(1)))
            .max(1) as u32,
        eval_key: Some(eval_id),
        encryption: fhe_batch_core::params::Encryption::SecretKey,
    };
    let batch = fhe_batch_fhe::batch::encrypt_batch_with(
        &key,
        &pkg.client,
        pkg.manifest.model_id,
        &columns,
        layout,
        &|_| {},
    );
    phases.push(("encrypt", t.elapsed()));
    let up = batch.len() as u64;
    let expected = fhe_batch_fhe::batch::ExpectedBatch {
        job: job.clone(),
        batch_header_sha256: Some(store::batch_header_sha256(&batch)?),
    };
    println!(
        "  {} ({:.0} B per digit), chunks of {} digits",
        bytes(up),
        up as f64 / records as f64,
        layout.records_per_chunk
    );

    let rt = crate::cmd::common::runtime()?;
    let bucket = FsStore::open(dir.join("bucket"))?;
    println!(
        "\n[4/6] publish the model and the evaluation key, upload the batch to {}/inbox/",
        bucket.root().display()
    );
    let t = Instant::now();
    rt.block_on(async {
        store::publish_model_dir(&model_dir, &bucket).await?;
        bucket.put(&layout::eval_key(&eval_id), eval_key).await?;
        bucket.put(&layout::inbox(&job), batch).await?;
        anyhow::Ok(())
    })?;
    phases.push(("upload", t.elapsed()));

    println!(
        "\n[5/6] run the pipeline: ingest, queue, {workers} workers, {pbs} bootstraps per digit (the service sees only ciphertexts)"
    );
    let t = Instant::now();
    let report = rt.block_on(run_local(&bucket, workers, true))?;
    let eval_time = t.elapsed();
    phases.push(("pipeline (ingest + evaluate)", eval_time));
    let st = rt.block_on(job_status(&bucket, &job))?;
    println!(
        "  ingest {}, evaluation {} ({:.2} s per digit)",
        dur(report.ingest_time),
        dur(report.work_time),
        report.work_time.as_secs_f64() / records as f64
    );
    println!("  {}", status_line(&st));
    if st.state != JobState::Succeeded {
        for f in &st.failures {
            println!("  failure: {}", f.reason);
        }
        bail!("the job did not succeed");
    }

    println!("\n[6/6] fetch and decrypt the scores (only the key holder can)");
    let t = Instant::now();
    let results = rt.block_on(store::read_results_from_store(&bucket, &job))?;
    let down: u64 = results.iter().map(|(_, b)| b.len() as u64).sum();
    let pb = bar(records as u64, "decrypt", true);
    let scores = fhe_batch_fhe::batch::decrypt_job_for(
        &key,
        &pkg.client,
        &pkg.manifest.model_id,
        &expected,
        &results,
        &|k| pb.inc(k),
    )?;
    pb.finish_and_clear();
    let predictions = dir.join("predictions.csv");
    write_predictions(&predictions, &pkg.client, &scores)?;
    phases.push(("fetch + decrypt", t.elapsed()));
    println!(
        "  {} down ({:.0} B per digit); predictions with class names in {}",
        bytes(down),
        down as f64 / records as f64,
        predictions.display()
    );

    check(mlp, &pkg, &compiled.proof, &test, records, &scores)?;
    println!("\ntime per phase:");
    for (name, d) in &phases {
        println!("  {name:<30} {}", dur(*d));
    }
    println!("  {:<30} {}", "total", dur(total.elapsed()));
    Ok(())
}

/// Compares the decrypted predictions with the labels, the float network and the integer
/// reference, and draws a few digits beside their predictions.
fn check(
    mlp: &fhe_batch_onnx::Mlp,
    pkg: &fhe_batch_core::model::ModelPackage,
    proof: &fhe_batch_core::mlp::MlpProof,
    test: &Dataset,
    records: usize,
    scores: &[i64],
) -> Result<()> {
    let ServerBody::NeuralNetwork(server) = &pkg.server.body else {
        bail!("not a network");
    };
    let Target::Classes { names, idx } = &test.y else {
        bail!("MNIST labels are classes");
    };
    let client = &pkg.client;
    let k = client.n_scores();
    let fhe_batch_onnx::OnnxTask::Classifier { labels } = &mlp.task else {
        bail!("the network is a classifier");
    };
    let (mut correct, mut float_correct, mut agree, mut within) = (0, 0, 0, 0);
    let mut drawn = Vec::new();
    for i in 0..records {
        let got = &scores[i * k..(i + 1) * k];
        let cols = client.columns(test.row(i));
        let want = server.eval_plain(&cols);
        let p = client.predict(got);
        let truth = &names[idx[i]];
        correct += usize::from(&p.label == truth);
        agree += usize::from(p.class == client.predict(&want).class);
        within += usize::from(
            got.iter()
                .zip(&want)
                .zip(&proof.score_error)
                .all(|((g, w), e)| ((g - w) as f64).abs() <= *e),
        );
        let x: Vec<f32> = test.row(i).iter().map(|&v| v as f32).collect();
        let fp = mlp.finish(mlp.raw_scores(&x));
        let float_label = fp
            .label
            .as_ref()
            .and_then(|l| labels.iter().position(|m| m == l))
            .map(|c| client.classes()[c].clone());
        float_correct += usize::from(float_label.as_ref() == Some(truth));
        if i < DRAWN {
            drawn.push((i, p.label.clone(), truth.clone(), p.scores.clone()));
        }
    }
    println!(
        "\n{} digits drawn beside their encrypted predictions:",
        drawn.len()
    );
    for (i, label, truth, probs) in &drawn {
        let art = draw(test.row(*i));
        let best = probs.iter().cloned().fold(0f64, f64::max);
        for (r, line) in art.iter().enumerate() {
            let note = match r {
                5 => format!("encrypted prediction: {label}"),
                6 => format!("label: {truth}"),
                7 => format!("probability {:.2}", best),
                _ => String::new(),
            };
            println!("  {line}  {note}");
        }
    }
    let n = records as f64;
    println!(
        "\n{records} digits: encrypted accuracy {:.1}% (float network {:.1}%), {agree}/{records} predictions equal the integer reference's, {within}/{records} digits' scores within the proven error",
        100.0 * correct as f64 / n,
        100.0 * float_correct as f64 / n,
    );
    Ok(())
}

/// A 28 x 28 digit as 14 lines of 28 characters (two pixel rows per line, darker is denser).
fn draw(pixels: &[f64]) -> Vec<String> {
    const SHADES: &[u8] = b" .:-=+*#%@";
    (0..14)
        .map(|r| {
            (0..28)
                .map(|c| {
                    let v = (pixels[2 * r * 28 + c] + pixels[(2 * r + 1) * 28 + c]) / 2.0;
                    let s = ((v / 256.0) * SHADES.len() as f64) as usize;
                    SHADES[s.min(SHADES.len() - 1)] as char
                })
                .collect()
        })
        .collect()
}
