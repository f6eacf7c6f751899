//! `fhe-batch bench`: per-record cost of encrypt / evaluate / decrypt and bytes up / down for
//! linear models on the bundled data sets and a synthetic 64 x 10 model, at their own size and
//! at scale; then, unless skipped, the local pipeline at scale and bootstrapping.

use super::pipeline::{self, PipelineFigures};
use super::{BenchArgs, dataset, machine, median, ms, pbs};
use crate::demo::{BREAST_CANCER_CSV, IRIS_CSV};
use crate::output::dur;
use anyhow::{Result, bail};
use fhe_batch_core::format::{BatchHeader, BatchLimits, ResultHeader};
use fhe_batch_core::model::ModelPackage;
use fhe_batch_core::params::ParamSet;
use fhe_batch_core::pipeline::{ChunkEvaluator, ChunkInput};
use fhe_batch_fhe::{GlweEvaluator, SecretKey};
use fhe_batch_train::TrainOptions;
use fhe_batch_train::data::{Dataset, synthetic_classification};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
struct Figures {
    workload: String,
    records: usize,
    features: usize,
    outputs: usize,
    chunks: usize,
    encrypt_ms: f64,
    eval_ms: f64,
    decrypt_ms: f64,
    total_ms: f64,
    up_bytes: u64,
    down_bytes: u64,
    encrypt_us_per_record: f64,
    eval_us_per_record: f64,
    decrypt_us_per_record: f64,
    up_bytes_per_record: f64,
    down_bytes_per_record: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: String,
    iters: usize,
    keygen_ms: f64,
    workloads: Vec<Figures>,
    pipeline: Option<PipelineFigures>,
    pbs: Option<fhe_batch_fhe::pbs::PbsFigures>,
}

pub(super) fn run(args: &BenchArgs) -> Result<()> {
    let t = Instant::now();
    let key = SecretKey::generate(ParamSet::Glwe2048TUniform17);
    let keygen = t.elapsed();
    let mut report = Report {
        machine: machine(),
        iters: args.iters,
        keygen_ms: ms(keygen),
        workloads: Vec::new(),
        pipeline: None,
        pbs: None,
    };
    let iris = dataset("iris", IRIS_CSV)?;
    let bc = dataset("breast_cancer", BREAST_CANCER_CSV)?;
    let syn = synthetic_classification(4096, 64, 10, 11);
    let s = args.scale_records;
    let workloads: Vec<(String, &Dataset, Dataset)> = vec![
        ("iris".into(), &iris, iris.clone()),
        (format!("iris-{s}"), &iris, iris.synthesize(s, 1)),
        ("breast_cancer".into(), &bc, bc.clone()),
        (format!("breast_cancer-{s}"), &bc, bc.synthesize(s, 2)),
        ("synthetic64x10-2048".into(), &syn, syn.synthesize(2048, 3)),
        (format!("synthetic64x10-{s}"), &syn, syn.synthesize(s, 4)),
    ];
    for (name, train, records) in &workloads {
        if !args.json {
            eprintln!("measuring {name} ...");
        }
        report
            .workloads
            .push(measure(name, train, records, &key, args.iters)?);
    }
    if args.pipeline_records > 0 {
        if !args.json {
            eprintln!(
                "running {} Iris records through the local pipeline ...",
                args.pipeline_records
            );
        }
        report.pipeline = Some(pipeline::measure(args.pipeline_records, args.workers)?);
    }
    if args.pbs > 0 {
        report.pbs = Some(pbs::measure(&key, args.pbs));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report, keygen);
    }
    Ok(())
}

/// Times of one encrypt / evaluate / decrypt round, and its bytes.
struct Round {
    encrypt: Duration,
    eval: Duration,
    decrypt: Duration,
    up: u64,
    down: u64,
    chunks: usize,
}

/// Trains and compiles on `train`, then runs `records` through `iters` rounds; the median
/// of each step is reported.
fn measure(
    name: &str,
    train: &Dataset,
    records: &Dataset,
    key: &SecretKey,
    iters: usize,
) -> Result<Figures> {
    let model = fhe_batch_train::train(train, &TrainOptions::default())?;
    let pkg = fhe_batch_train::compile(&model, train, train, 8, ParamSet::Glwe2048TUniform17)?;
    let f = pkg.client.n_features();
    let n = records.len();
    let quantized: Vec<u64> = (0..n)
        .flat_map(|i| pkg.client.columns(records.row(i)))
        .collect();
    let rounds = (0..iters.max(1))
        .map(|_| round(name, &pkg, key, &quantized))
        .collect::<Result<Vec<Round>>>()?;
    let last = rounds.last().expect("at least one round");
    let (up, down, chunks) = (last.up, last.down, last.chunks);
    let enc = median(rounds.iter().map(|r| r.encrypt).collect());
    let eval = median(rounds.iter().map(|r| r.eval).collect());
    let dec = median(rounds.iter().map(|r| r.decrypt).collect());
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    Ok(Figures {
        workload: name.to_string(),
        records: n,
        features: f,
        outputs: pkg.server.result_values() as usize,
        chunks,
        encrypt_ms: ms(enc),
        eval_ms: ms(eval),
        decrypt_ms: ms(dec),
        total_ms: ms(enc + eval + dec),
        up_bytes: up,
        down_bytes: down,
        encrypt_us_per_record: per(enc),
        eval_us_per_record: per(eval),
        decrypt_us_per_record: per(dec),
        up_bytes_per_record: up as f64 / n as f64,
        down_bytes_per_record: down as f64 / n as f64,
    })
}

/// Encrypts `quantized`, evaluates every chunk on one core (as one worker does), decrypts,
/// and checks every record's logits against the plaintext reference.
fn round(name: &str, pkg: &ModelPackage, key: &SecretKey, quantized: &[u64]) -> Result<Round> {
    let (client, server) = (&pkg.client, &pkg.server);
    let model_id = pkg.manifest.model_id;
    let t = Instant::now();
    let batch = fhe_batch_fhe::batch::encrypt_batch(key, client, model_id, quantized, &|_| {});
    let encrypt = t.elapsed();
    let header = BatchHeader::parse(&batch, &BatchLimits::default())?;
    let chunks = header.chunks.len();
    // Evaluation on one core, as one worker runs it (byte range -> result body).
    let t = Instant::now();
    let bodies: Vec<Vec<u8>> = header
        .chunks
        .iter()
        .map(|c| {
            GlweEvaluator.evaluate(
                server,
                &ChunkInput {
                    payload: &batch[c.offset as usize..(c.offset + c.length) as usize],
                    records: c.records,
                    records_per_chunk: header.records_per_chunk,
                    eval_key: None,
                    encryption: fhe_batch_core::params::Encryption::SecretKey,
                },
            )
        })
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let eval = t.elapsed();
    let results: Vec<(String, Vec<u8>)> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let h = ResultHeader {
                params: server.params,
                ciphertexts: server.output_ciphertexts(header.chunks[i].records, 2048),
                chunk_index: i as u32,
                chunk_count: chunks as u32,
                records: header.chunks[i].records,
                output_bits: server.output_bits(),
                model_id,
                key_fingerprint: key.fingerprint(),
                first_record: i as u64 * ParamSet::Glwe2048TUniform17.polynomial_size() as u64,
                binding: None,
            };
            (format!("{i}"), h.encode(body))
        })
        .collect();
    let down = results.iter().map(|(_, b)| b.len() as u64).sum();
    let t = Instant::now();
    let logits = fhe_batch_fhe::batch::decrypt_job(key, client, &model_id, &results, &|_| {})?;
    let decrypt = t.elapsed();
    let exact = quantized
        .chunks_exact(client.n_features())
        .zip(logits.chunks_exact(server.result_values() as usize))
        .all(|(q, l)| server.eval_plain(q) == l);
    if !exact {
        bail!("{name}: decrypted logits differ from the plaintext reference");
    }
    Ok(Round {
        encrypt,
        eval,
        decrypt,
        up: batch.len() as u64,
        down,
        chunks,
    })
}

/// The table, the per-record lines and the key=value lines.
fn print_text(report: &Report, keygen: Duration) {
    println!(
        "fhe-batch bench on {} (median of {} runs; keygen {} excluded)",
        report.machine,
        report.iters,
        dur(keygen)
    );
    println!(
        "\n{:<24}{:>9}{:>7}{:>11}{:>11}{:>11}{:>11}{:>10}{:>12}",
        "workload",
        "records",
        "chunks",
        "encrypt",
        "evaluate",
        "decrypt",
        "total",
        "up B/rec",
        "down B/rec"
    );
    for w in &report.workloads {
        println!(
            "{:<24}{:>9}{:>7}{:>11}{:>11}{:>11}{:>11}{:>10.1}{:>12.1}",
            w.workload,
            w.records,
            w.chunks,
            format!("{:.3} ms", w.encrypt_ms),
            format!("{:.3} ms", w.eval_ms),
            format!("{:.3} ms", w.decrypt_ms),
            format!("{:.3} ms", w.total_ms),
            w.up_bytes_per_record,
            w.down_bytes_per_record
        );
    }
    println!("\nper record (us): encrypt / evaluate (1 core) / decrypt");
    for w in &report.workloads {
        println!(
            "  {:<24}{:>10.4}{:>10.4}{:>10.4}",
            w.workload, w.encrypt_us_per_record, w.eval_us_per_record, w.decrypt_us_per_record
        );
    }
    if let Some(p) = &report.pipeline {
        pipeline::print_table(p);
    }
    println!();
    for w in &report.workloads {
        println!(
            "workload={} records={} chunks={} encrypt_ms={:.3} eval_ms={:.3} decrypt_ms={:.3} total_ms={:.3} up_bytes={} down_bytes={} encrypt_us_per_record={:.4} eval_us_per_record={:.4} decrypt_us_per_record={:.4}",
            w.workload,
            w.records,
            w.chunks,
            w.encrypt_ms,
            w.eval_ms,
            w.decrypt_ms,
            w.total_ms,
            w.up_bytes,
            w.down_bytes,
            w.encrypt_us_per_record,
            w.eval_us_per_record,
            w.decrypt_us_per_record
        );
    }
    if let Some(p) = &report.pipeline {
        pipeline::print_line(p);
    }
    if let Some(b) = &report.pbs {
        pbs::print_line(b);
    }
}
