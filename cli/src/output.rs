//! Human output helpers: sizes, durations, a compiled model's summary, a job's status line,
//! predictions CSV.

use anyhow::{Context, Result};
use fhe_batch_core::job::{JobState, JobStatus};
use fhe_batch_core::model::{ClientModel, ModelPackage};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}

/// A compiled model's summary: family and shape, the compile report, and the proven bounds.
pub fn print_model(pkg: &ModelPackage) {
    let m = &pkg.manifest;
    let metric = if pkg.client.is_classifier() {
        "accuracy"
    } else {
        "R^2"
    };
    println!(
        "  model {} ({}, {} features, {} encrypted columns per record, {} scores, {} bootstraps per record)",
        m.model_id,
        m.family,
        pkg.client.n_features(),
        m.input_columns,
        pkg.client.n_scores(),
        m.pbs_per_record
    );
    println!(
        "  on {} {} records: float {metric} {:.1}%, quantized {metric} {:.1}%, agreement {:.1}%",
        m.report.records,
        m.report.evaluated_on,
        100.0 * m.report.float_score,
        100.0 * m.report.quantized_score,
        100.0 * m.report.agreement
    );
    println!(
        "  proven: results in [{}, {}] fit {} bits; worst-case noise 2^{:.1}, {:.1} bits below the decoding limit",
        m.bounds.output_min,
        m.bounds.output_max,
        m.bounds.output_bits,
        m.bounds.noise_log2,
        m.bounds.noise_margin_bits
    );
}

/// One line of a job's state: `job ID: STATE done/total chunks, N records`.
pub fn status_line(st: &JobStatus) -> String {
    if st.state == JobState::Queued && st.chunks_total == 0 && st.failures.is_empty() {
        return format!("job {}: QUEUED (uploaded, waiting for ingest)", st.job);
    }
    let mut s = format!(
        "job {}: {} {}/{} chunks, {} records",
        st.job, st.state, st.chunks_done, st.chunks_total, st.records
    );
    if st.attempt > 1 {
        s.push_str(&format!(", attempt {}", st.attempt));
    }
    if st.state == JobState::Failed {
        s.push_str(&format!(" ({} failures)", st.failures.len().max(1)));
    }
    s
}

/// Writes decrypted predictions as CSV: `record,prediction` then one probability column per
/// class (classifiers) or nothing more (regression).
pub fn write_predictions(path: &Path, model: &ClientModel, logits: &[i64]) -> Result<usize> {
    let outputs = model.n_scores();
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut header = format!("record,{}", model.target);
    let probabilities = model.is_classifier();
    if probabilities {
        for c in model.classes() {
            header.push_str(&format!(",p_{c}"));
        }
    }
    writeln!(w, "{header}")?;
    let mut n = 0;
    for (i, l) in logits.chunks_exact(outputs).enumerate() {
        let p = model.predict(l);
        write!(w, "{i},{}", p.label)?;
        if probabilities {
            for s in &p.scores {
                write!(w, ",{s:.4}")?;
            }
        }
        writeln!(w)?;
        n += 1;
    }
    w.flush()?;
    Ok(n)
}
