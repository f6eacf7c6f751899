//! `fhe-batch bench --mlp M.onnx --mlp-data D.csv[.gz]`: a neural network on encrypted
//! records. The first `--mlp-calibration-rows` rows calibrate the compile, the rest are the
//! test rows: the compile report covers all of them (float and quantized accuracy, agreement
//! under simulated noise), and the first `--mlp-records` test rows are encrypted, evaluated by
//! the worker's evaluator in chunks as a worker would, and decrypted. Prints the issue's
//! `workload=... s_per_record=...` line.

use super::machine;
use anyhow::{Context, Result, bail};
use fhe_batch_core::format::ChunkLayout;
use fhe_batch_core::model::ServerBody;
use fhe_batch_core::pipeline::ChunkEvaluator;
use fhe_batch_fhe::forest::{EvalKey, eval_key_id};
use fhe_batch_fhe::{FheEvaluator, SecretKey};
use fhe_batch_train::data::{Dataset, Target};
use fhe_batch_train::import::{ImportData, ImportOptions};
use fhe_batch_train::mlp::compile_mlp;
use std::path::Path;
use std::time::Instant;

/// Options of one network benchmark.
pub struct MlpBench<'a> {
    pub onnx: &'a Path,
    pub data: &'a Dataset,
    pub calibration_rows: usize,
    pub records: usize,
    pub n_bits: u8,
    pub json: bool,
}

pub fn run(b: &MlpBench<'_>) -> Result<()> {
    let params = fhe_batch_core::params::ParamSet::Glwe2048TUniform17;
    let bytes = std::fs::read(b.onnx).with_context(|| format!("reading {}", b.onnx.display()))?;
    let fhe_batch_onnx::FloatModel::Mlp(mlp) = fhe_batch_onnx::import_onnx(&bytes)?.model else {
        bail!("{} is not a neural network", b.onnx.display());
    };
    let all = b.data;
    if b.calibration_rows >= all.len() {
        bail!("--mlp-calibration-rows must leave test rows");
    }
    let calibration = all.select(&(0..b.calibration_rows).collect::<Vec<_>>());
    let test = all.select(&(b.calibration_rows..all.len()).collect::<Vec<_>>());
    let t = Instant::now();
    let c = compile_mlp(
        &mlp,
        ImportData {
            all,
            calibration: &calibration,
            eval: &test,
            evaluated_on: "test rows",
        },
        &ImportOptions {
            n_bits: b.n_bits,
            params,
            leaf_range: None,
        },
    )?;
    let compile_s = t.elapsed().as_secs_f64();
    let pkg = &c.package;
    let ServerBody::NeuralNetwork(server) = &pkg.server.body else {
        bail!("not a network package");
    };
    let key = SecretKey::generate(params);
    let t = Instant::now();
    let eval_key = EvalKey::generate(&key).to_bytes();
    let keygen_s = t.elapsed().as_secs_f64();
    let id = eval_key_id(&eval_key);
    let evaluator = FheEvaluator::new(None);
    evaluator
        .install_eval_key(&id, eval_key.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = b.records.min(test.len());
    let rows: Vec<Vec<f64>> = (0..n).map(|i| test.row(i).to_vec()).collect();
    let columns: Vec<u64> = rows.iter().flat_map(|r| pkg.client.columns(r)).collect();
    // Full chunks as a worker would get them, at most the records measured.
    let slots = fhe_batch_core::budget::ChunkBudget::default()
        .records_per_chunk(server.neurons(), params.polynomial_size())
        .min(n.max(1));
    let layout = ChunkLayout {
        records_per_chunk: slots as u32,
        eval_key: Some(id),
        encryption: fhe_batch_core::params::Encryption::SecretKey,
    };
    let t = Instant::now();
    let batch = fhe_batch_fhe::batch::encrypt_batch_with(
        &key,
        &pkg.client,
        pkg.manifest.model_id,
        &columns,
        layout,
        &|_| {},
    );
    let encrypt_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let results = super::trees::evaluate(&evaluator, pkg, &key, &id, &batch)?;
    let eval_s = t.elapsed().as_secs_f64();
    let down: usize = results.iter().map(|(_, r)| r.len()).sum();
    let t = Instant::now();
    let scores = fhe_batch_fhe::batch::decrypt_job(
        &key,
        &pkg.client,
        &pkg.manifest.model_id,
        &results,
        &|_| {},
    )?;
    let decrypt_s = t.elapsed().as_secs_f64();
    let k = pkg.client.n_scores();
    let (mut agree, mut correct, mut float_correct, mut within) = (0, 0, 0, 0);
    // Score deviations from the reference: measured, and as the compile's noise model draws them.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    let (mut sq_measured, mut sq_simulated, mut count) = (0f64, 0f64, 0usize);
    for (i, (r, got)) in rows.iter().zip(scores.chunks_exact(k)).enumerate() {
        let cols = pkg.client.columns(r);
        let want = server.eval_plain(&cols);
        within += usize::from(
            got.iter()
                .zip(&want)
                .zip(&c.proof.score_error)
                .all(|((g, w), e)| ((g - w) as f64).abs() <= *e),
        );
        let simulated = fhe_batch_train::mlp::simulate_scores(server, &cols, params, &mut rng);
        for ((g, w), s) in got.iter().zip(&want).zip(&simulated) {
            sq_measured += ((g - w) as f64).powi(2);
            sq_simulated += ((s - w) as f64).powi(2);
            count += 1;
        }
        let p = pkg.client.predict(got);
        agree += usize::from(p.class == pkg.client.predict(&want).class);
        if let Target::Classes { names, idx } = &test.y {
            correct += usize::from(p.label == names[idx[i]]);
            let x: Vec<f32> = r.iter().map(|&v| v as f32).collect();
            let fp = mlp.finish(mlp.raw_scores(&x));
            let truth = &names[idx[i]];
            if let (Some(l), fhe_batch_onnx::OnnxTask::Classifier { labels }) =
                (&fp.label, &mlp.task)
            {
                let k = labels.iter().position(|m| m == l);
                float_correct += usize::from(k.map(|k| &pkg.client.classes()[k]) == Some(truth));
            }
        }
    }
    let name = b
        .onnx
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let s = &c.summary;
    let nf = n.max(1) as f64;
    let figures = serde_json::json!({
        "workload": name,
        "machine": machine(),
        "records": n,
        "records_per_chunk": slots,
        "s_per_record": eval_s / nf,
        "pbs_per_record": s.pbs_per_record,
        "accuracy": correct as f64 / nf,
        "float_accuracy": float_correct as f64 / nf,
        "agreement": agree as f64 / nf,
        "within_proven_error": within as f64 / nf,
        "score_deviation_rms_measured": (sq_measured / count.max(1) as f64).sqrt(),
        "score_deviation_rms_simulated": (sq_simulated / count.max(1) as f64).sqrt(),
        "up_bytes_per_record": batch.len() as f64 / nf,
        "down_bytes_per_record": down as f64 / nf,
        "compile_s": compile_s,
        "eval_keygen_s": keygen_s,
        "eval_key_bytes": eval_key.len(),
        "encrypt_s": encrypt_s,
        "eval_s": eval_s,
        "decrypt_s": decrypt_s,
        "test_rows": s.report.records,
        "test_float_accuracy": s.report.float_score,
        "test_quantized_accuracy": s.report.quantized_score,
        "test_quantized_float_agreement": s.report.agreement,
        "test_simulated_encrypted_agreement": s.simulated_agreement,
        "test_simulated_encrypted_accuracy": s.simulated_accuracy,
        "min_span_positions": s.min_span_positions,
        "max_noise_positions": s.max_noise_positions,
    });
    if b.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    println!(
        "workload={name} records={n} s_per_record={:.3} pbs_per_record={} accuracy={:.4} float_accuracy={:.4} agreement={:.4} up_bytes_per_record={:.0} down_bytes_per_record={:.0}",
        eval_s / nf,
        s.pbs_per_record,
        correct as f64 / nf,
        float_correct as f64 / nf,
        agree as f64 / nf,
        batch.len() as f64 / nf,
        down as f64 / nf,
    );
    println!(
        "  {} ({}): compile {compile_s:.1} s, evaluation key {} B in {keygen_s:.1} s, encrypt {encrypt_s:.2} s, evaluate {eval_s:.1} s ({slots} records per chunk), decrypt {decrypt_s:.3} s; {within}/{n} records within the proven score error",
        name,
        machine(),
        eval_key.len(),
    );
    println!(
        "  score - reference, root mean square over {count} scores: measured {:.1}, the compile's noise model {:.1} (result units; proven bound {:.0})",
        (sq_measured / count.max(1) as f64).sqrt(),
        (sq_simulated / count.max(1) as f64).sqrt(),
        c.proof.score_error.iter().cloned().fold(0f64, f64::max)
    );
    println!(
        "  on all {} test rows (plaintext): float accuracy {:.4}, quantized {:.4}, quantized agrees with float {:.4}, encrypted agrees with quantized under simulated noise {:.4}{}",
        s.report.records,
        s.report.float_score,
        s.report.quantized_score,
        s.report.agreement,
        s.simulated_agreement,
        s.simulated_accuracy.map_or_else(String::new, |a| format!(
            ", encrypted accuracy under simulated noise {a:.4}"
        ))
    );
    Ok(())
}
