//! `fhe-batch bench --pipeline-records N`: N synthetic Iris records through the whole local
//! pipeline (the demo, run quietly), timed from the records CSV to the predictions CSV.

use super::ms;
use crate::demo::DemoArgs;
use anyhow::{Result, bail};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub(super) struct PipelineFigures {
    pub workload: String,
    pub records: usize,
    pub workers: usize,
    pub total_ms: f64,
    pub up_bytes: u64,
    pub down_bytes: u64,
    pub phases_ms: Vec<(String, f64)>,
}

/// Runs the demo on `records` records with `workers` workers in a scratch directory.
pub(super) fn measure(records: usize, workers: usize) -> Result<PipelineFigures> {
    let dir = std::env::temp_dir().join(format!("fhe-batch-bench-{}", std::process::id()));
    let demo = DemoArgs {
        model: crate::demo::DemoModel::Linear,
        records,
        workers,
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
    Ok(PipelineFigures {
        workload: format!("pipeline-iris-{}", summary.records),
        records: summary.records,
        workers,
        total_ms: counted.iter().map(|(_, m)| m).sum(),
        up_bytes: summary.up_bytes,
        down_bytes: summary.down_bytes,
        phases_ms: counted,
    })
}

/// The pipeline's lines of the text report: the summary and the time per phase.
pub(super) fn print_table(p: &PipelineFigures) {
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

/// The pipeline's key=value line.
pub(super) fn print_line(p: &PipelineFigures) {
    println!(
        "workload={} records={} workers={} total_ms={:.1} up_bytes={} down_bytes={}",
        p.workload, p.records, p.workers, p.total_ms, p.up_bytes, p.down_bytes
    );
}
