//! `fhe-batch bench --trees M.onnx,...`: tree ensembles on encrypted records, per model:
//! bootstraps per record, evaluation key size and load (cold start) time, bytes up and down per
//! record at the model's chunk size, encrypt / evaluate / decrypt time, and a check that every
//! decrypted score equals the plaintext integer reference.

use crate::output::dur;
use anyhow::{Context, Result, bail};
use fhe_batch_core::budget::ChunkBudget;
use fhe_batch_core::format::{BatchHeader, BatchLimits, ChunkLayout, ResultHeader};
use fhe_batch_core::ids::EvalKeyId;
use fhe_batch_core::model::ModelPackage;
use fhe_batch_core::pipeline::{ChunkEvaluator, ChunkInput};
use fhe_batch_fhe::forest::{EvalKey, eval_key_id};
use fhe_batch_fhe::{FheEvaluator, SecretKey};
use fhe_batch_train::data::Dataset;
use fhe_batch_train::trees::CompiledForest;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct TreeFigures {
    pub model: String,
    pub records: usize,
    pub trees: usize,
    pub pbs_per_record: usize,
    pub thermometer_bits: usize,
    pub slot_bits: u8,
    /// Tree groups (each summed into its own score slots), score slots per record, and the
    /// integer spread of a tree's leaves.
    pub groups: usize,
    pub score_slots: u32,
    pub leaf_range: u64,
    pub records_per_chunk: usize,
    pub eval_key_bytes: usize,
    pub eval_keygen_s: f64,
    pub cold_start_deserialize_s: f64,
    pub cold_start_prepare_s: f64,
    pub encrypt_s: f64,
    pub eval_s: f64,
    pub decrypt_s: f64,
    pub eval_s_per_record: f64,
    pub up_bytes_per_record: f64,
    pub down_bytes_per_record: f64,
    pub exact: usize,
    pub accuracy: f64,
}

/// One secret key and its evaluation key, shared by every model.
struct Keys {
    key: SecretKey,
    eval_key: Vec<u8>,
    id: EvalKeyId,
    keygen_s: f64,
}

/// Runs each model on the first `records` rows of `data` (a labelled data set whose feature
/// columns are the models' inputs), with one worker using every core.
pub fn run(models: &[PathBuf], data: &Dataset, records: usize, json: bool) -> Result<()> {
    let key = SecretKey::generate(fhe_batch_core::params::ParamSet::Glwe2048TUniform17);
    let t = Instant::now();
    let eval_key = EvalKey::generate(&key).to_bytes();
    let keygen_s = t.elapsed().as_secs_f64();
    let id = eval_key_id(&eval_key);
    let keys = Keys {
        key,
        eval_key,
        id,
        keygen_s,
    };
    let out = models
        .iter()
        .map(|path| measure(path, &keys, data, records))
        .collect::<Result<Vec<_>>>()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_text(&out, &keys);
    }
    Ok(())
}

/// Compiles the model at `path`, then encrypts, evaluates and decrypts its records.
fn measure(path: &Path, keys: &Keys, data: &Dataset, records: usize) -> Result<TreeFigures> {
    // A fresh evaluator per model: the key load is the worker's cold start.
    let evaluator = FheEvaluator::new(None);
    evaluator
        .install_eval_key(&keys.id, keys.eval_key.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cold = evaluator.last_cold_start().context("cold start figures")?;
    let onnx = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let fhe_batch_onnx::FloatModel::Trees(e) = fhe_batch_onnx::import_onnx(&onnx)?.model else {
        bail!("{} is not a tree ensemble", path.display());
    };
    // Compiled as `fhe-batch import` compiles it by default: the leaf resolution chosen on the
    // calibration records of a 20% holdout split (seed 42).
    let (calibration, _) = data.split(0.2, 42);
    let cal_rows: Vec<Vec<f32>> = (0..calibration.len())
        .map(|i| calibration.row(i).iter().map(|&v| v as f32).collect())
        .collect();
    let (c, _) = fhe_batch_train::trees::quantize_trees_on(&e, &cal_rows)?;
    let pkg = fhe_batch_train::trees::package_forest(
        &e,
        &c,
        data.feature_names.clone(),
        data.target_name.clone(),
        None,
        None,
        "",
    )?;
    let n = records.min(data.len());
    let rows: Vec<Vec<f64>> = (0..n).map(|i| data.row(i).to_vec()).collect();
    let columns: Vec<u64> = rows.iter().flat_map(|r| pkg.client.columns(r)).collect();
    let slots = ChunkBudget::default().records_per_chunk(c.plan.pbs_per_record(), 2048);
    let layout = ChunkLayout {
        records_per_chunk: slots as u32,
        eval_key: Some(keys.id),
        encryption: fhe_batch_core::params::Encryption::SecretKey,
    };
    let t = Instant::now();
    let batch = fhe_batch_fhe::batch::encrypt_batch_with(
        &keys.key,
        &pkg.client,
        pkg.manifest.model_id,
        &columns,
        layout,
        &|_| {},
    );
    let encrypt_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let results = evaluate(&evaluator, &pkg, &keys.key, &keys.id, &batch)?;
    let eval_s = t.elapsed().as_secs_f64();
    let down: usize = results.iter().map(|(_, r)| r.len()).sum();
    let t = Instant::now();
    let scores = fhe_batch_fhe::batch::decrypt_job(
        &keys.key,
        &pkg.client,
        &pkg.manifest.model_id,
        &results,
        &|_| {},
    )?;
    let decrypt_s = t.elapsed().as_secs_f64();
    let (exact, correct) = check(&e, &c, &pkg, data, &rows, &scores);
    if exact != n {
        bail!(
            "{}: {} of {n} records differ from the plaintext reference",
            path.display(),
            n - exact
        );
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    Ok(TreeFigures {
        model: name,
        records: n,
        trees: c.model.trees.len(),
        pbs_per_record: c.plan.pbs_per_record(),
        thermometer_bits: c.model.thresholds.len(),
        slot_bits: c.plan.slot_bits,
        groups: c.layout.groups,
        score_slots: c.plan.score_slots,
        leaf_range: c.layout.leaf_range,
        records_per_chunk: slots,
        eval_key_bytes: keys.eval_key.len(),
        eval_keygen_s: keys.keygen_s,
        cold_start_deserialize_s: cold.deserialize_s,
        cold_start_prepare_s: cold.prepare_s,
        encrypt_s,
        eval_s,
        decrypt_s,
        eval_s_per_record: eval_s / n as f64,
        up_bytes_per_record: batch.len() as f64 / n as f64,
        down_bytes_per_record: down as f64 / n as f64,
        exact,
        accuracy: correct as f64 / n as f64,
    })
}

/// Evaluates every chunk of `batch` in turn, as one worker does; returns the result files.
pub(super) fn evaluate(
    evaluator: &FheEvaluator,
    pkg: &ModelPackage,
    key: &SecretKey,
    id: &EvalKeyId,
    batch: &[u8],
) -> Result<Vec<(String, Vec<u8>)>> {
    let header = BatchHeader::parse(batch, &BatchLimits::default())?;
    let mut results = Vec::new();
    for (i, ch) in header.chunks.iter().enumerate() {
        let body = evaluator
            .evaluate(
                &pkg.server,
                &ChunkInput {
                    payload: &batch[ch.offset as usize..(ch.offset + ch.length) as usize],
                    records: ch.records,
                    records_per_chunk: header.records_per_chunk,
                    eval_key: Some(id),
                    encryption: fhe_batch_core::params::Encryption::SecretKey,
                },
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let h = ResultHeader {
            params: header.params,
            ciphertexts: pkg.server.output_ciphertexts(ch.records, 2048),
            chunk_index: i as u32,
            chunk_count: header.chunks.len() as u32,
            records: ch.records,
            output_bits: pkg.server.output_bits(),
            model_id: pkg.manifest.model_id,
            key_fingerprint: key.fingerprint(),
            first_record: i as u64 * header.records_per_chunk as u64,
            binding: None,
        };
        results.push((format!("chunk-{i}"), h.encode(&body)));
    }
    Ok(results)
}

/// (records whose scores equal the plaintext integer reference, predictions equal to the label).
fn check(
    e: &fhe_batch_onnx::TreeEnsemble,
    c: &CompiledForest,
    pkg: &ModelPackage,
    data: &Dataset,
    rows: &[Vec<f64>],
    scores: &[i64],
) -> (usize, usize) {
    // The data set's labels written as the model's class labels.
    let labels: Vec<String> = fhe_batch_train::trees::labelled_rows(e, data)
        .map(|labelled| labelled.into_iter().map(|(_, l)| l).collect())
        .unwrap_or_default();
    let outputs = pkg.client.n_scores();
    let mut exact = 0;
    let mut correct = 0;
    for (i, (s, r)) in scores.chunks_exact(outputs).zip(rows).enumerate() {
        let x: Vec<f32> = r.iter().map(|&v| v as f32).collect();
        exact += usize::from(s == c.model.eval_plain(&c.model.bits(&x)).as_slice());
        let label = pkg.client.predict(s).label;
        correct += usize::from(labels.get(i) == Some(&label));
    }
    (exact, correct)
}

/// The markdown table and the key=value lines.
fn print_text(out: &[TreeFigures], keys: &Keys) {
    println!(
        "tree ensembles on {} ({} threads): evaluation key {} bytes, generated in {:.2} s",
        super::machine(),
        rayon::current_num_threads(),
        keys.eval_key.len(),
        keys.keygen_s
    );
    println!(
        "| model | records | PBS/record | groups / slots x bits / leaf range | s/record (eval) | up B/record | down B/record | chunk | cold start s | exact | accuracy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for f in out {
        println!(
            "| {} | {} | {} | {} / {} x {} / {} | {:.3} | {:.0} | {:.0} | {} | {:.2} + {:.2} | {}/{} | {:.1}% |",
            f.model,
            f.records,
            f.pbs_per_record,
            f.groups,
            f.score_slots,
            f.slot_bits,
            f.leaf_range,
            f.eval_s_per_record,
            f.up_bytes_per_record,
            f.down_bytes_per_record,
            f.records_per_chunk,
            f.cold_start_deserialize_s,
            f.cold_start_prepare_s,
            f.exact,
            f.records,
            f.accuracy * 100.0
        );
    }
    for f in out {
        println!(
            "trees model={} records={} pbs_per_record={} eval_s={:.2} encrypt_s={:.3} decrypt_s={:.3} total {}",
            f.model,
            f.records,
            f.pbs_per_record,
            f.eval_s,
            f.encrypt_s,
            f.decrypt_s,
            dur(std::time::Duration::from_secs_f64(
                f.eval_s + f.encrypt_s + f.decrypt_s
            ))
        );
    }
}
