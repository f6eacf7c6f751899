//! `fhe-batch bench`: measurements for the people building and operating fhe-batch, kept
//! apart from the commands data owners run. The linear workloads ([`linear`]: per-record
//! cost on the bundled data sets and a synthetic 64 x 10 model), the local pipeline at scale
//! ([`pipeline`]), programmable bootstrapping on our parameters ([`pbs`]) and imported tree
//! ensembles ([`trees`]) each have their module; this one has the arguments, the dispatch and
//! the helpers they share.

mod encryption;
mod linear;
mod mlp;
mod pbs;
mod pipeline;
mod trees;

use crate::demo::BREAST_CANCER_CSV;
use anyhow::Result;
use fhe_batch_train::Task;
use fhe_batch_train::data::{Dataset, read_labelled_csv};
use std::time::Duration;

/// Measure encrypt / evaluate / decrypt time and bytes up / down per record.
///
/// By default: linear models on the bundled data sets and a synthetic 64 x 10 model, then the
/// local pipeline at scale (--pipeline-records) and, with --pbs, bootstrapping. With --trees,
/// imported tree ensembles instead.
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
    /// Measure tfhe's audited parameter sets that could replace ours for bootstrapping (the
    /// 2_2 set we use, its KS32 variant, the 1_1 set, multi-bit 2_2), this many bootstraps
    /// each, one line per set.
    #[arg(long, default_value_t = 0)]
    pbs_candidates: usize,
    /// Benchmark these tree-ensemble ONNX files instead (comma-separated; e.g. the ones in
    /// tests/fixtures/onnx): compiled, encrypted, evaluated with bootstraps and decrypted on
    /// the bundled breast-cancer records, every score checked against the plaintext reference.
    #[arg(long, value_delimiter = ',')]
    trees: Vec<std::path::PathBuf>,
    /// Records per tree model (the first ones of the breast-cancer data).
    #[arg(long, default_value_t = 128, value_parser = at_least_one)]
    tree_records: usize,
    /// Benchmark this neural-network ONNX file instead (e.g.
    /// tests/fixtures/onnx/mnist-mlp-784-128-10.onnx with --mlp-data data/mnist-10k.csv.gz):
    /// compiled on the calibration rows, reported on the test rows, and --mlp-records test
    /// rows encrypted, evaluated with bootstraps and decrypted.
    #[arg(long)]
    mlp: Option<std::path::PathBuf>,
    /// Labelled CSV (or .csv.gz) for --mlp, label column `label`.
    #[arg(long, default_value = "data/mnist-10k.csv.gz")]
    mlp_data: std::path::PathBuf,
    /// Rows of --mlp-data that calibrate the compile (the rest are test rows).
    #[arg(long, default_value_t = 8000)]
    mlp_calibration_rows: usize,
    /// Test rows encrypted and evaluated.
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    mlp_records: usize,
    /// Input bits of the network's quantized features.
    #[arg(long, default_value_t = 8)]
    mlp_bits: u8,
    /// Compare secret-key and public-key batches instead: encryption time and bytes per
    /// record for each family's chunk shape, and the public key's size and generation time.
    #[arg(long)]
    encryption: bool,
}

/// A record count of at least one (a benchmark of no records has nothing to measure).
fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("a benchmark needs at least 1 record".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.encryption {
        return encryption::run(args.iters, args.json);
    }
    if args.pbs_candidates > 0 {
        let figures = fhe_batch_fhe::pbs::measure_candidates(args.pbs_candidates);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&figures)?);
        } else {
            println!("{}", machine());
            for f in figures {
                println!(
                    "pbs_candidate set=\"{}\" k={} N={} positions={} n={} bootstraps={} single_thread_ms={:.2} parallel_ms={:.2} keyswitch_ms={} batched_parallel_ms={} threads={} all_correct={}",
                    f.name,
                    f.glwe_dimension,
                    f.polynomial_size,
                    2 * f.polynomial_size,
                    f.lwe_dimension,
                    f.bootstraps,
                    f.single_thread_ms,
                    f.parallel_ms,
                    f.keyswitch_ms
                        .map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}")),
                    f.batched_parallel_ms
                        .map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}")),
                    rayon::current_num_threads(),
                    f.all_correct
                );
            }
        }
        return Ok(());
    }
    if let Some(onnx) = &args.mlp {
        let data = read_labelled_csv(&args.mlp_data, "label", Task::Classification)?;
        return mlp::run(&mlp::MlpBench {
            onnx,
            data: &data,
            calibration_rows: args.mlp_calibration_rows,
            records: args.mlp_records,
            n_bits: args.mlp_bits,
            json: args.json,
        });
    }
    if !args.trees.is_empty() {
        let bc = dataset("breast_cancer", BREAST_CANCER_CSV)?;
        return trees::run(&args.trees, &bc, args.tree_records, args.json);
    }
    linear::run(&args)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A bundled CSV read as a classification data set.
fn dataset(name: &str, csv: &str) -> Result<Dataset> {
    let path =
        std::env::temp_dir().join(format!("fhe-batch-bench-{}-{name}.csv", std::process::id()));
    std::fs::write(&path, csv)?;
    let ds = read_labelled_csv(&path, "label", Task::Classification);
    let _ = std::fs::remove_file(&path);
    Ok(ds?)
}

/// The CPU model and thread count, for the report's header.
fn machine() -> String {
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
