//! `fhe-batch bench`: per-record cost of encrypt / evaluate / decrypt and bytes up / down on
//! the bundled data sets and a synthetic 64 x 10 model, plus a large run through the local
//! pipeline (CSV in, predictions CSV out).

use crate::demo::{BREAST_CANCER_CSV, DemoArgs, IRIS_CSV};
use crate::output::dur;
use anyhow::{Result, bail};
use fhe_batch_core::format::{BatchHeader, BatchLimits, ResultHeader};
use fhe_batch_core::params::ParamSet;
use fhe_batch_core::pipeline::ChunkEvaluator;
use fhe_batch_core::pipeline::ChunkInput;
use fhe_batch_fhe::{GlweEvaluator, SecretKey};
use fhe_batch_train::data::{Dataset, read_labelled_csv, synthetic_classification};
use fhe_batch_train::{Task, TrainOptions};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Print one JSON document instead of the table and key=value lines.
    #[arg(long)]
    json: bool,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Records per "at scale" workload.
    #[arg(long, default_value_t = 65_536)]
    scale_records: usize,
    /// Records for the end-to-end local pipeline run (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    pipeline_records: usize,
    /// Workers for the pipeline run.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Also measure programmable bootstrapping (tfhe shortint server key on our parameters):
    /// key generation, key sizes, and this many bootstraps on one thread and on all cores
    /// (0 skips it).
    #[arg(long, default_value_t = 0)]
    pbs: usize,
    /// Benchmark these tree-ensemble ONNX files instead (comma-separated; e.g. the ones in
    /// tests/fixtures/onnx): compiled, encrypted, evaluated with bootstraps and decrypted on
    /// the bundled breast-cancer records, every score checked against the plaintext reference.
    #[arg(long, value_delimiter = ',')]
    trees: Vec<std::path::PathBuf>,
    /// Records per tree model (the first ones of the breast-cancer data).
    #[arg(long, default_value_t = 128)]
    tree_records: usize,
}

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
struct PipelineFigures {
    workload: String,
    records: usize,
    workers: usize,
    total_ms: f64,
    up_bytes: u64,
    down_bytes: u64,
    phases_ms: Vec<(String, f64)>,
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn dataset(name: &str, csv: &str) -> Result<Dataset> {
    let path =
        std::env::temp_dir().join(format!("fhe-batch-bench-{}-{name}.csv", std::process::id()));
    std::fs::write(&path, csv)?;
    let ds = read_labelled_csv(&path, "label", Task::Classification);
    let _ = std::fs::remove_file(&path);
    Ok(ds?)
}

fn measure(
    name: &str,
    train: &Dataset,
    records: &Dataset,
    key: &SecretKey,
    iters: usize,
) -> Result<Figures> {
    let model = fhe_batch_train::train(train, &TrainOptions::default())?;
    let pkg = fhe_batch_train::compile(&model, train, train, 8, ParamSet::Glwe2048TUniform17)?;
    let (client, server) = (&pkg.client, &pkg.server);
    let f = client.n_features();
    let n = records.len();
    let quantized: Vec<u64> = (0..n)
        .flat_map(|i| client.quantize(records.row(i)))
        .collect();
    let model_id = pkg.manifest.model_id;

    let mut t_enc = Vec::new();
    let mut t_eval = Vec::new();
    let mut t_dec = Vec::new();
    let mut up = 0;
    let mut down = 0;
    let mut chunks = 0;
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        let batch = fhe_batch_fhe::batch::encrypt_batch(key, client, model_id, &quantized, &|_| {});
        t_enc.push(t.elapsed());
        up = batch.len() as u64;
        let header = BatchHeader::parse(&batch, &BatchLimits::default())?;
        chunks = header.chunks.len();
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
                        slots: header.slots,
                        eval_key: None,
                    },
                )
            })
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        t_eval.push(t.elapsed());
        let results: Vec<(String, Vec<u8>)> = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                let h = ResultHeader {
                    params: server.params,
                    n_outputs: server.n_outputs,
                    chunk_index: i as u32,
                    chunk_count: chunks as u32,
                    records: header.chunks[i].records,
                    plaintext_bits: server.plaintext_bits,
                    model_id,
                    key_fingerprint: key.fingerprint(),
                    first_record: i as u64 * ParamSet::Glwe2048TUniform17.polynomial_size() as u64,
                };
                (format!("{i}"), h.encode(body))
            })
            .collect();
        down = results.iter().map(|(_, b)| b.len() as u64).sum();
        let t = Instant::now();
        let logits = fhe_batch_fhe::batch::decrypt_job(key, client, &model_id, &results, &|_| {})?;
        t_dec.push(t.elapsed());
        let exact = quantized
            .chunks_exact(f)
            .zip(logits.chunks_exact(server.n_outputs as usize))
            .all(|(q, l)| server.eval_plain(q) == l);
        if !exact {
            bail!("{name}: decrypted logits differ from the plaintext reference");
        }
    }
    let (enc, eval, dec) = (median(t_enc), median(t_eval), median(t_dec));
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    Ok(Figures {
        workload: name.to_string(),
        records: n,
        features: f,
        outputs: server.n_outputs as usize,
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

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cpu}, {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )
}

pub fn run(args: BenchArgs) -> Result<()> {
    if !args.trees.is_empty() {
        let bc = dataset("breast_cancer", BREAST_CANCER_CSV)?;
        return crate::bench_trees::run(&args.trees, &bc, args.tree_records, args.json);
    }
    let t = Instant::now();
    let key = SecretKey::generate(ParamSet::Glwe2048TUniform17);
    let keygen = t.elapsed();
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
    let mut report = Report {
        machine: machine(),
        iters: args.iters,
        keygen_ms: ms(keygen),
        workloads: Vec::new(),
        pipeline: None,
        pbs: None,
    };
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
        let dir = std::env::temp_dir().join(format!("fhe-batch-bench-{}", std::process::id()));
        let demo = DemoArgs {
            records: args.pipeline_records,
            workers: args.workers,
            n_bits: 8,
            dir: dir.clone(),
        };
        let summary = crate::demo::run_with(&demo, true)?;
        let _ = std::fs::remove_dir_all(&dir);
        if summary.exact != summary.records {
            bail!("pipeline: decrypted logits differ from the plaintext reference");
        }
        // CSV in to predictions CSV out: everything but training, key generation and writing
        // the synthetic input file.
        let counted: Vec<(String, f64)> = summary
            .phases
            .iter()
            .filter(|(p, _)| !matches!(*p, "train + compile" | "keygen" | "write synthetic CSV"))
            .map(|(p, d)| (p.to_string(), ms(*d)))
            .collect();
        report.pipeline = Some(PipelineFigures {
            workload: format!("pipeline-iris-{}", summary.records),
            records: summary.records,
            workers: args.workers,
            total_ms: counted.iter().map(|(_, m)| m).sum(),
            up_bytes: summary.up_bytes,
            down_bytes: summary.down_bytes,
            phases_ms: counted,
        });
    }
    if args.pbs > 0 {
        report.pbs = Some(fhe_batch_fhe::pbs::measure(&key, args.pbs));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "fhe-batch bench on {} (median of {} runs; keygen {} excluded)",
        report.machine,
        report.iters,
        dur(keygen)
    );
    println!(
        "\n{:<24}{:>9}{:>7}{:>11}{:>11}{:>11}{:>11}{:>10}{:>10}",
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
            "{:<24}{:>9}{:>7}{:>11}{:>11}{:>11}{:>11}{:>10.1}{:>10.1}",
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
        println!(
            "\n{}: {} records, CSV in -> predictions CSV out in {:.2} s with {} workers",
            p.workload,
            p.records,
            p.total_ms / 1e3,
            p.workers
        );
        for (name, m) in &p.phases_ms {
            println!("  {name:<30}{m:>10.1} ms");
        }
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
        println!(
            "workload={} records={} workers={} total_ms={:.1} up_bytes={} down_bytes={}",
            p.workload, p.records, p.workers, p.total_ms, p.up_bytes, p.down_bytes
        );
    }
    if let Some(b) = &report.pbs {
        println!(
            "pbs bootstraps={} keygen_s={:.2} compressed_key_bytes={} server_key_bytes={} decompress_s={:.2} single_thread_per_s={:.1} parallel_per_s={:.1} threads={} all_correct={}",
            b.bootstraps,
            b.keygen_s,
            b.compressed_key_bytes,
            b.server_key_bytes,
            b.decompress_s,
            b.single_thread_per_s,
            b.parallel_per_s,
            b.threads,
            b.all_correct
        );
    }
    Ok(())
}
