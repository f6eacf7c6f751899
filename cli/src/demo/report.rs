//! The demo's closing check and report: every decrypted prediction against the quantized
//! plaintext model (exact integer logits), the float model and the labels; a few predictions;
//! bytes up and down; time per phase.

use super::phases::{Decrypted, Encrypted, Trained};
use super::{Demo, DemoSummary};
use crate::output::{bytes, dur};
use anyhow::{Result, bail};
use fhe_batch_train::Target;
use std::time::Instant;

/// How the encrypted predictions compare with the labels and the plaintext models.
pub(super) struct Check {
    /// Logits per record.
    outputs: usize,
    /// Predictions equal to the label.
    correct: usize,
    /// Records whose decrypted logits equal the quantized model's.
    agree_q: usize,
    /// Records whose predicted class is the float model's.
    agree_f: usize,
    /// The labels of the first records, shown next to their predictions.
    sample_truth: Vec<String>,
}

/// Records shown with their predictions.
const SAMPLE: usize = 5;

pub(super) fn check(trained: &Trained, enc: &Encrypted, dec: &Decrypted) -> Result<Check> {
    let client = &enc.side.client;
    let outputs = client.n_scores();
    let Target::Classes { names, idx } = &enc.labelled.y else {
        bail!("Iris labels are classes")
    };
    let (f, logits) = (enc.f, &dec.logits);
    let (mut correct, mut agree_q, mut agree_f) = (0usize, 0usize, 0usize);
    for i in 0..enc.n {
        let fhe = client.predict(&logits[i * outputs..(i + 1) * outputs]);
        let fhe_class = fhe.class.expect("classifier");
        let q = &enc.quantized[i * f..(i + 1) * f];
        let reference = trained.pkg.server.eval_plain(q);
        let exact = reference == logits[i * outputs..(i + 1) * outputs];
        agree_q += usize::from(exact);
        agree_f +=
            usize::from(trained.model.predict_class(&enc.raw[i * f..(i + 1) * f]) == fhe_class);
        let truth = &names[idx[i]];
        correct += usize::from(client.classes()[fhe_class] == *truth);
    }
    let sample_truth = (0..enc.n.min(SAMPLE))
        .map(|i| names[idx[i]].clone())
        .collect();
    Ok(Check {
        outputs,
        correct,
        agree_q,
        agree_f,
        sample_truth,
    })
}

/// Prints the predictions file, a few predictions, the results and the time per phase.
pub(super) fn print(demo: &Demo<'_>, enc: &Encrypted, dec: &Decrypted, c: &Check, total: Instant) {
    let (quiet, n) = (demo.quiet, enc.n);
    say!(
        quiet,
        "  {} predictions written to {}",
        n,
        dec.predictions_path.display()
    );
    say!(
        quiet,
        "\n  record  truth        encrypted prediction   probabilities"
    );
    for (i, truth) in c.sample_truth.iter().enumerate() {
        let p = enc
            .side
            .client
            .predict(&dec.logits[i * c.outputs..(i + 1) * c.outputs]);
        let probs: Vec<String> = p.scores.iter().map(|s| format!("{s:.2}")).collect();
        say!(
            quiet,
            "  {:>6}  {:<12} {:<22} {}",
            i,
            truth,
            p.label,
            probs.join(" ")
        );
    }
    let pct = |k: usize| 100.0 * k as f64 / n as f64;
    let per = |b: u64| b as f64 / n as f64;
    let (correct, agree_q, agree_f) = (c.correct, c.agree_q, c.agree_f);
    say!(quiet, "\nresults");
    say!(
        quiet,
        "  accuracy vs labels            {:.1}% ({correct}/{n})",
        pct(correct)
    );
    say!(
        quiet,
        "  agreement, quantized model    {:.1}% ({agree_q}/{n} records with identical integer logits)",
        pct(agree_q)
    );
    say!(
        quiet,
        "  agreement, float model        {:.1}% ({agree_f}/{n})",
        pct(agree_f)
    );
    say!(
        quiet,
        "  bytes up                      {} ({:.1} B per record)",
        bytes(enc.up),
        per(enc.up)
    );
    say!(
        quiet,
        "  bytes down                    {} ({:.1} B per record)",
        bytes(dec.down),
        per(dec.down)
    );
    say!(quiet, "\ntime per phase");
    for (name, time) in &demo.phases {
        say!(quiet, "  {:<30}{}", name, dur(*time));
    }
    say!(quiet, "  {:<30}{}", "total", dur(total.elapsed()));
}

/// Fails unless every record decrypted to the quantized model's logits; else the summary.
pub(super) fn finish(
    demo: Demo<'_>,
    enc: Encrypted,
    dec: Decrypted,
    c: Check,
) -> Result<DemoSummary> {
    let n = enc.n;
    if c.agree_q != n {
        bail!(
            "{} records decrypted differently from the quantized plaintext model",
            n - c.agree_q
        );
    }
    say!(
        demo.quiet,
        "\nOK: every encrypted prediction equals the plaintext quantized model's."
    );
    Ok(DemoSummary {
        records: n,
        up_bytes: enc.up,
        down_bytes: dec.down,
        exact: c.agree_q,
        phases: demo.phases,
    })
}
