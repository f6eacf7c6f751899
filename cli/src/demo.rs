//! `fhe-batch demo`: the whole product, end to end, on the embedded default.

use crate::local::{bar, run_local};
use crate::output::{bytes, dur, print_model, status_line, write_predictions};
use crate::store;
use anyhow::{Context, Result, bail};
use fhe_batch_core::ids::JobId;
use fhe_batch_core::job::JobState;
use fhe_batch_core::layout;
use fhe_batch_core::params::ParamSet;
use fhe_batch_core::pipeline::job_status;
use fhe_batch_core::ports::ObjectStore;
use fhe_batch_fhe::SecretKey;
use fhe_batch_local::FsStore;
use fhe_batch_train::data::{read_labelled_csv, read_records, write_csv};
use fhe_batch_train::{Target, Task, TrainOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The bundled Iris data set (CC BY 4.0, see data/README.md).
pub const IRIS_CSV: &str = include_str!("../../data/iris.csv");
/// The bundled breast-cancer data set (CC BY 4.0, see data/README.md).
pub const BREAST_CANCER_CSV: &str = include_str!("../../data/breast_cancer.csv");

macro_rules! say {
    ($quiet:expr, $($arg:tt)*) => {
        if !$quiet {
            println!($($arg)*);
        }
    };
}

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Records to push through the pipeline: 150 uses the real Iris records; more draws
    /// synthetic records like them (up to 100,000,000).
    #[arg(long, default_value_t = 150)]
    pub records: usize,
    /// Concurrent workers.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Bits per quantized input and weight.
    #[arg(long, default_value_t = 8)]
    pub n_bits: u8,
    /// Working directory (keys, batch, local bucket, predictions). Emptied first.
    #[arg(long, default_value = ".fhe-batch/demo")]
    pub dir: PathBuf,
}

struct Phase {
    name: &'static str,
    time: Duration,
}

/// Figures of one demo run, for the benchmark.
pub struct DemoSummary {
    pub records: usize,
    pub up_bytes: u64,
    pub down_bytes: u64,
    pub exact: usize,
    /// Seconds per phase, in order.
    pub phases: Vec<(&'static str, Duration)>,
}

pub fn run(args: DemoArgs) -> Result<()> {
    run_with(&args, false).map(|_| ())
}

/// Runs the demo; `quiet` suppresses all output (the benchmark uses it).
pub fn run_with(args: &DemoArgs, quiet: bool) -> Result<DemoSummary> {
    if args.records == 0 || args.records > 100_000_000 {
        bail!("--records must be between 1 and 100,000,000");
    }
    let total = Instant::now();
    let mut phases: Vec<Phase> = Vec::new();
    let mut phase = |name, t: Instant| {
        phases.push(Phase {
            name,
            time: t.elapsed(),
        })
    };
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("emptying {}", args.dir.display()))?;
    }
    std::fs::create_dir_all(&args.dir)?;
    let dir = &args.dir;
    let job = JobId::parse("iris-demo").expect("valid");

    say!(
        quiet,
        "fhe-batch demo: encrypted Iris classification, end to end, on a local bucket"
    );
    say!(quiet, "working directory {}\n", dir.display());

    // 1. Model owner: train and compile.
    say!(
        quiet,
        "[1/6] train and compile a logistic regression on Iris (80/20 split)"
    );
    let t = Instant::now();
    let iris_path = dir.join("iris.csv");
    std::fs::write(&iris_path, IRIS_CSV)?;
    let iris = read_labelled_csv(&iris_path, "label", Task::Classification)?;
    let (train, holdout) = iris.split(0.2, 42);
    let model = fhe_batch_train::train(&train, &TrainOptions::default())?;
    let mut pkg = fhe_batch_train::compile(
        &model,
        &train,
        &holdout,
        args.n_bits,
        ParamSet::Glwe2048TUniform17,
    )?;
    pkg.manifest.report.evaluated_on = "holdout".into();
    let model_dir = dir.join("model");
    store::write_model_dir(&pkg, &model_dir)?;
    phase("train + compile", t);
    if !quiet {
        print_model(&pkg);
    }

    // 2. Data owner: key.
    say!(
        quiet,
        "\n[2/6] generate the data owner's secret key (stays on this machine)"
    );
    let t = Instant::now();
    let key = SecretKey::generate(ParamSet::Glwe2048TUniform17);
    let key_path = dir.join("client.key");
    key.save(&key_path, true)?;
    phase("keygen", t);
    say!(
        quiet,
        "  {} (owner-only), fingerprint {}",
        key_path.display(),
        key.fingerprint()
    );

    // 3. Data owner: records CSV -> encrypted batch.
    let records_path = dir.join("records.csv");
    let source = if args.records == iris.len() {
        std::fs::copy(&iris_path, &records_path)?;
        "the 150 Iris records".to_string()
    } else {
        let t = Instant::now();
        write_csv(&iris.synthesize(args.records, 7), &records_path)?;
        phase("write synthetic CSV", t);
        format!("{} synthetic records drawn like Iris", args.records)
    };
    say!(
        quiet,
        "\n[3/6] encrypt {source} ({})",
        records_path.display()
    );
    let t = Instant::now();
    let side = store::read_client_side(&model_dir)?;
    let labelled = read_labelled_csv(&records_path, "label", Task::Classification)?;
    let raw = if labelled.feature_names == side.client.feature_names {
        labelled.x.clone()
    } else {
        read_records(&records_path, &side.client.feature_names)?
    };
    let f = side.client.n_features();
    let n = raw.len() / f;
    let quantized: Vec<u64> = raw
        .chunks_exact(f)
        .flat_map(|r| side.client.quantize(r))
        .collect();
    phase("read + quantize CSV", t);
    let t = Instant::now();
    let pb = bar(n as u64, "encrypt", !quiet);
    let batch = fhe_batch_fhe::batch::encrypt_batch(
        &key,
        &side.client,
        side.manifest.model_id,
        &quantized,
        &|k| pb.inc(k),
    );
    pb.finish_and_clear();
    let batch_path = dir.join(format!("{job}.fheb"));
    std::fs::write(&batch_path, &batch)?;
    phase("encrypt", t);
    let up = batch.len() as u64;
    say!(
        quiet,
        "  {} : {} ({:.1} B per record)",
        batch_path.display(),
        bytes(up),
        up as f64 / n as f64
    );

    // 4. Upload: publish the model, drop the batch in the inbox.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let bucket = FsStore::open(dir.join("bucket"))?;
    say!(
        quiet,
        "\n[4/6] publish the model and upload the batch to {}/inbox/",
        bucket.root().display()
    );
    let t = Instant::now();
    rt.block_on(async {
        store::publish_model_dir(&model_dir, &bucket).await?;
        bucket.put(&layout::inbox(&job), batch).await?;
        anyhow::Ok(())
    })?;
    phase("upload", t);
    say!(
        quiet,
        "  {}",
        status_line(&rt.block_on(job_status(&bucket, &job))?)
    );

    // 5. The service: ingest + workers.
    say!(
        quiet,
        "\n[5/6] run the pipeline: ingest, queue, {} workers (the cloud side sees only ciphertexts)",
        args.workers
    );
    let t = Instant::now();
    let report = rt.block_on(run_local(&bucket, args.workers, !quiet))?;
    phase("pipeline (ingest + evaluate)", t);
    let st = rt.block_on(job_status(&bucket, &job))?;
    say!(
        quiet,
        "  ingest {}, evaluation {} ({} chunks written, {} duplicates, {} failed)",
        dur(report.ingest_time),
        dur(report.work_time),
        report.written,
        report.duplicates,
        report.failed
    );
    say!(quiet, "  {}", status_line(&st));
    if st.state != JobState::Succeeded {
        for f in &st.failures {
            say!(quiet, "  failure: {}", f.reason);
        }
        bail!("the job did not succeed");
    }

    // 6. Data owner: fetch + decrypt.
    say!(
        quiet,
        "\n[6/6] fetch and decrypt the results (only the key holder can)"
    );
    let t = Instant::now();
    let results = rt.block_on(store::read_results_from_store(&bucket, &job))?;
    let down: u64 = results.iter().map(|(_, b)| b.len() as u64).sum();
    phase("fetch", t);
    let t = Instant::now();
    let pb = bar(n as u64, "decrypt", !quiet);
    let logits = fhe_batch_fhe::batch::decrypt_job(
        &key,
        &side.client,
        &side.manifest.model_id,
        &results,
        &|k| pb.inc(k),
    )?;
    pb.finish_and_clear();
    phase("decrypt", t);
    let t = Instant::now();
    let predictions_path = dir.join("predictions.csv");
    write_predictions(&predictions_path, &side.client, &logits)?;
    phase("write predictions CSV", t);

    // Check against the plaintext models.
    let outputs = side.client.n_outputs as usize;
    let Target::Classes { names, idx } = &labelled.y else {
        bail!("Iris labels are classes")
    };
    let (mut correct, mut agree_q, mut agree_f) = (0usize, 0usize, 0usize);
    for i in 0..n {
        let fhe = side.client.predict(&logits[i * outputs..(i + 1) * outputs]);
        let fhe_class = fhe.class.expect("classifier");
        let q = &quantized[i * f..(i + 1) * f];
        let reference = pkg.server.eval_plain(q);
        let exact = reference == logits[i * outputs..(i + 1) * outputs];
        agree_q += usize::from(exact);
        agree_f += usize::from(model.predict_class(&raw[i * f..(i + 1) * f]) == fhe_class);
        let truth = &names[idx[i]];
        correct += usize::from(side.client.classes[fhe_class] == *truth);
    }
    say!(
        quiet,
        "  {} predictions written to {}",
        n,
        predictions_path.display()
    );
    say!(
        quiet,
        "\n  record  truth        encrypted prediction   probabilities"
    );
    for i in 0..n.min(5) {
        let p = side.client.predict(&logits[i * outputs..(i + 1) * outputs]);
        let probs: Vec<String> = p.scores.iter().map(|s| format!("{s:.2}")).collect();
        say!(
            quiet,
            "  {:>6}  {:<12} {:<22} {}",
            i,
            names[idx[i]],
            p.label,
            probs.join(" ")
        );
    }

    say!(quiet, "\nresults");
    say!(
        quiet,
        "  accuracy vs labels            {:.1}% ({correct}/{n})",
        100.0 * correct as f64 / n as f64
    );
    say!(
        quiet,
        "  agreement, quantized model    {:.1}% ({agree_q}/{n} records with identical integer logits)",
        100.0 * agree_q as f64 / n as f64
    );
    say!(
        quiet,
        "  agreement, float model        {:.1}% ({agree_f}/{n})",
        100.0 * agree_f as f64 / n as f64
    );
    say!(
        quiet,
        "  bytes up                      {} ({:.1} B per record)",
        bytes(up),
        up as f64 / n as f64
    );
    say!(
        quiet,
        "  bytes down                    {} ({:.1} B per record)",
        bytes(down),
        down as f64 / n as f64
    );
    say!(quiet, "\ntime per phase");
    for p in &phases {
        say!(quiet, "  {:<30}{}", p.name, dur(p.time));
    }
    say!(quiet, "  {:<30}{}", "total", dur(total.elapsed()));
    if agree_q != n {
        bail!(
            "{} records decrypted differently from the quantized plaintext model",
            n - agree_q
        );
    }
    say!(
        quiet,
        "\nOK: every encrypted prediction equals the plaintext quantized model's."
    );
    Ok(DemoSummary {
        records: n,
        up_bytes: up,
        down_bytes: down,
        exact: agree_q,
        phases: phases.iter().map(|p| (p.name, p.time)).collect(),
    })
}
