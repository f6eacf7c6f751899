//! Human output helpers: sizes, durations, predictions CSV.

use anyhow::{Context, Result};
use fhe_batch_core::model::{ClientModel, ModelKind};
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

/// Writes decrypted predictions as CSV: `record,prediction` then one probability column per
/// class (classifiers) or nothing more (regression).
pub fn write_predictions(path: &Path, model: &ClientModel, logits: &[i64]) -> Result<usize> {
    let outputs = model.n_scores();
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut header = format!("record,{}", model.target);
    let probabilities = model.kind != ModelKind::LinearRegression && !model.classes.is_empty();
    if probabilities {
        for c in &model.classes {
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
