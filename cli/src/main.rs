//! `fhe-batch`: the data owner's client for the fhe-batch encrypted-inference pipeline.
//!
//! Train and compile a model, generate a secret key, encrypt a CSV of records into a batch,
//! run the pipeline on the local bucket (or upload to S3), check status, and decrypt the
//! predictions. `fhe-batch demo` does all of it in one command.

mod bench;
mod bench_trees;
mod demo;
mod local;
mod output;
mod remote;
mod store;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use fhe_batch_core::ids::JobId;
use fhe_batch_core::layout;
use fhe_batch_core::params::ParamSet;
use fhe_batch_core::pipeline::{IngestOutcome, job_status, list_jobs};
use fhe_batch_core::ports::ObjectStore;
use fhe_batch_fhe::SecretKey;
use fhe_batch_local::FsStore;
use fhe_batch_train::data::{Dataset, read_labelled_csv, read_records};
use fhe_batch_train::{Task, TrainOptions};
use std::path::PathBuf;
use std::time::Instant;

const DEFAULT_STORE: &str = ".fhe-batch/bucket";

/// Encrypted batch inference: your records stay encrypted end to end; only you can read the
/// predictions.
///
/// A typical session:
///
///   fhe-batch train --data iris.csv --out model/        # train + compile (model owner)
///   fhe-batch keygen --out client.key                  # secret key, never leaves you
///   fhe-batch encrypt --model model/ --key client.key --input records.csv --out claims.fheb
///   fhe-batch publish --model model/ && fhe-batch submit claims.fheb
///   fhe-batch run                                      # local pipeline (or upload to S3)
///   fhe-batch status claims
///   fhe-batch decrypt --model model/ --key client.key --job claims --out predictions.csv
///
/// On AWS, add `--bucket NAME` to publish, submit, status, fetch and decrypt --job.
/// Or see it all at once: `fhe-batch demo`.
#[derive(Parser, Debug)]
#[command(name = "fhe-batch", version, verbatim_doc_comment)]
struct Cli {
    /// Log level for diagnostics on stderr (error, warn, info, debug).
    #[arg(long, global = true, env = "FHE_BATCH_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TaskArg {
    /// Classification when the label column has any non-numeric value, else regression.
    Auto,
    Classification,
    Regression,
}

/// How a model is quantized, evaluated and written (train and import).
#[derive(clap::Args, Debug)]
struct CompileArgs {
    /// Bits per quantized input and per integer weight (2..=16).
    #[arg(long, default_value_t = 8)]
    n_bits: u8,
    /// Share of records held out to report accuracy on (0 reports on all records).
    #[arg(long, default_value_t = 0.2)]
    holdout: f64,
    /// Seed of the holdout split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output directory of the compiled model.
    #[arg(long, short)]
    out: PathBuf,
}

impl CompileArgs {
    /// Splits `ds` into (calibration, evaluation, what the report is on).
    fn split(&self, ds: &Dataset) -> Result<(Dataset, Dataset, &'static str)> {
        if !(0.0..0.9).contains(&self.holdout) {
            bail!("--holdout must be in [0, 0.9)");
        }
        Ok(if self.holdout > 0.0 {
            let (t, e) = ds.split(self.holdout, self.seed);
            (t, e, "holdout")
        } else {
            (ds.clone(), ds.clone(), "all records")
        })
    }

    /// Quantizes, proves and writes `model`; prints its summary.
    fn compile_and_write(
        &self,
        model: &fhe_batch_train::FloatModel,
        calibration: &Dataset,
        eval: &Dataset,
        on: &str,
    ) -> Result<()> {
        let mut pkg = fhe_batch_train::compile(
            model,
            calibration,
            eval,
            self.n_bits,
            ParamSet::Glwe2048TUniform17,
        )?;
        pkg.manifest.report.evaluated_on = on.into();
        store::write_model_dir(&pkg, &self.out)?;
        demo::print_model(&pkg);
        println!("model written to {}", self.out.display());
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
struct StoreArg {
    /// The local bucket: a directory standing in for the S3 bucket.
    #[arg(long, env = "FHE_BATCH_STORE", default_value = DEFAULT_STORE)]
    store: PathBuf,
    /// Use this S3 bucket (the deployed stack's BucketName output) instead of the local one.
    /// Credentials, region and endpoint come from the usual AWS environment
    /// (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL, ...).
    #[arg(long, env = "FHE_BATCH_BUCKET")]
    bucket: Option<String>,
}

impl StoreArg {
    async fn open(&self) -> Result<store::Bucket> {
        store::Bucket::open(&self.store, self.bucket.as_deref()).await
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model on a labelled CSV and compile it for encrypted inference.
    ///
    /// Logistic regression (binary or multinomial) for class labels, linear regression for a
    /// numeric target. Inputs are quantized per feature to --n-bits and weights to signed
    /// --n-bits integers; the compiler proves from the weights that no encrypted result can
    /// overflow or be corrupted by noise, and refuses the model otherwise. Writes
    /// manifest.json, server.bin (weights: for the service) and client.json (features,
    /// quantization, classes: for data owners; no weights).
    #[command(alias = "compile")]
    Train {
        /// Labelled CSV with a header row.
        #[arg(long, env = "FHE_BATCH_DATA")]
        data: PathBuf,
        /// Name of the label column.
        #[arg(long, default_value = "label")]
        label: String,
        #[arg(long, value_enum, default_value = "auto")]
        task: TaskArg,
        #[command(flatten)]
        compile: CompileArgs,
    },
    /// Import a model trained in Python and exported to ONNX (skl2onnx, onnxmltools) and compile
    /// it for encrypted inference, like `train` does for its own models.
    ///
    /// Reads LinearClassifier, LinearRegressor, TreeEnsembleClassifier and
    /// TreeEnsembleRegressor graphs and names anything else it cannot read. Linear models
    /// are quantized against --data (a labelled CSV whose feature columns are the model's
    /// inputs, in order), proven exact and written like `train` writes them. Tree ensembles
    /// are read and checked, but cannot be compiled for encrypted evaluation in this version.
    Import {
        /// The .onnx file.
        #[arg(long)]
        onnx: PathBuf,
        /// Labelled CSV: the model's features (in its input order) and the label column.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "label")]
        label: String,
        #[command(flatten)]
        compile: CompileArgs,
    },
    /// Generate a secret key (written owner-only; it never leaves this machine).
    Keygen {
        #[arg(long, short, default_value = "client.key")]
        out: PathBuf,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
    /// Encrypt a CSV of records into a batch file (.fheb) for a compiled model.
    ///
    /// The CSV needs a header row naming the model's features; other columns are ignored.
    Encrypt {
        /// Compiled model directory (only its client part is used).
        #[arg(long, short)]
        model: PathBuf,
        #[arg(long, short, default_value = "client.key")]
        key: PathBuf,
        #[arg(long, short)]
        input: PathBuf,
        #[arg(long, short)]
        out: PathBuf,
        /// Tree ensembles: the evaluation key id to name (default: the one `publish-key` saved
        /// next to the key file, KEY.evalkey).
        #[arg(long)]
        eval_key: Option<String>,
        /// Records per chunk (default: all N slots for linear models; for tree ensembles, sized
        /// from the model's bootstrap count so a chunk takes about 5 minutes on a worker).
        #[arg(long)]
        chunk_records: Option<u32>,
    },
    /// Generate the evaluation key of your secret key (tfhe's compressed server key and a
    /// packing key: public material that lets the service bootstrap, never decrypt) and upload
    /// it once to keys/<id>/eval.key, where id is a hash of its content. Tree ensembles need
    /// it. The id is saved next to the key file (KEY.evalkey) for `encrypt`.
    PublishKey {
        #[arg(long, short, default_value = "client.key")]
        key: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Publish a compiled model to the bucket (models/<model_id>/).
    Publish {
        #[arg(long, short)]
        model: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Upload a batch to the bucket's inbox/ (what `aws s3 cp batch.fheb s3://BUCKET/inbox/` does).
    Submit {
        batch: PathBuf,
        /// Job id (default: the file name without .fheb).
        #[arg(long)]
        job: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Run the local pipeline: ingest every batch in inbox/ and evaluate all queued chunks.
    Run {
        /// Concurrent workers.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show a job's state (QUEUED, RUNNING done/total, SUCCEEDED, FAILED with reasons), or list jobs.
    Status {
        job: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Download a job's result files (what `aws s3 cp --recursive s3://BUCKET/results/JOB/ DIR` does).
    Fetch {
        job: String,
        /// Directory for the .fher files.
        #[arg(long, short)]
        out: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Decrypt a job's results into a predictions CSV.
    Decrypt {
        #[arg(long, short)]
        model: PathBuf,
        #[arg(long, short, default_value = "client.key")]
        key: PathBuf,
        /// Read results of this job from the bucket...
        #[arg(long, conflicts_with = "results")]
        job: Option<String>,
        /// ...or from a directory of .fher files (e.g. `aws s3 cp --recursive s3://BUCKET/results/JOB/ DIR`).
        #[arg(long)]
        results: Option<PathBuf>,
        #[arg(long, short, default_value = "predictions.csv")]
        out: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Ingest uploaded batches into the jobs queue, as the ingest function does on an S3 event
    /// (for a stack without S3 notifications, such as a local endpoint).
    Ingest {
        /// Object keys (inbox/JOB.fheb); all of inbox/ when none is given.
        keys: Vec<String>,
        #[command(flatten)]
        remote: remote::RemoteArgs,
    },
    /// Run queue workers outside Lambda (a VM, a container, a local stack): poll the jobs queue
    /// (SQS) and write chunk results to the bucket, as the worker function does. Prints one
    /// JSON line per handled message.
    Worker {
        /// Concurrent workers in this process.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// The queue's dead-letter limit (maxReceiveCount of its redrive policy).
        #[arg(long, default_value_t = 5)]
        max_receives: u32,
        /// Stop after this many idle seconds (default: run until killed).
        #[arg(long)]
        idle_exit_secs: Option<u64>,
        #[command(flatten)]
        remote: remote::RemoteArgs,
    },
    /// Run the whole product on the bundled Iris data, end to end, on the local bucket.
    Demo(demo::DemoArgs),
    /// Measure encrypt / evaluate / decrypt time and bytes up / down per record.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli.command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Compiles an imported tree ensemble for encrypted evaluation and writes its package:
/// thresholds become the client's thermometer bits, leaves are quantized to what the score
/// slots carry exactly, and the bootstrap plan is proven. Prints the compile report.
fn compile_trees(
    e: &fhe_batch_onnx::TreeEnsemble,
    ds: &Dataset,
    eval: &Dataset,
    on: &str,
    out: &std::path::Path,
) -> Result<()> {
    let c = fhe_batch_train::trees::quantize_trees(e)?;
    let plan = &c.plan;
    let n = ParamSet::Glwe2048TUniform17.polynomial_size();
    let per_chunk = fhe_batch_core::tree::records_per_chunk(plan.pbs_per_record(), n);
    println!(
        "  {} trees, depth <= {}, {} leaves; {} thermometer bits per record ({} B up)",
        c.model.trees.len(),
        c.model.max_depth(),
        e.trees.iter().map(|t| t.leaves()).sum::<usize>(),
        c.model.thresholds.len(),
        c.model.thresholds.len() * 8,
    );
    println!(
        "  {} bootstraps per record ({} lookup tables each), {} score slots of {} bits, leaves spread over {} integers",
        plan.pbs_per_record(),
        plan.functions,
        plan.n_slots,
        plan.slot_bits,
        c.layout.leaf_range
    );
    println!(
        "  estimated {:.2} s per record on a 2-vCPU worker ({} bootstraps/s); chunks of {per_chunk} records (~{:.0} s each)",
        plan.pbs_per_record() as f64 / fhe_batch_core::tree::WORKER_PBS_PER_SECOND,
        fhe_batch_core::tree::WORKER_PBS_PER_SECOND,
        per_chunk as f64 * plan.pbs_per_record() as f64
            / fhe_batch_core::tree::WORKER_PBS_PER_SECOND
    );
    println!(
        "  evaluation key: about 64 MB per data owner, uploaded once (tfhe's compressed server key and a packing key)"
    );
    let report = match fhe_batch_train::trees::labelled_rows(e, eval) {
        Ok(rows) => {
            let r = fhe_batch_train::trees::tree_report(e, &c, &rows);
            println!(
                "  on {} {on} records: float accuracy {:.1}%, quantized {:.1}%, agreement {:.1}%",
                r.records,
                r.float_accuracy * 100.0,
                r.quantized_accuracy * 100.0,
                r.agreement * 100.0
            );
            Some(r)
        }
        Err(_) => None,
    };
    let pkg = fhe_batch_train::trees::package_forest(
        e,
        &c,
        ds.feature_names.clone(),
        ds.target_name.clone(),
        match &ds.y {
            fhe_batch_train::Target::Classes { names, .. } => Some(names.as_slice()),
            _ => None,
        },
        report.as_ref(),
        on,
    )?;
    store::write_model_dir(&pkg, out)?;
    println!(
        "model {} written to {}; data owners need an evaluation key: `fhe-batch publish-key`",
        pkg.manifest.model_id,
        out.display()
    );
    Ok(())
}

fn job_arg(s: &str) -> Result<JobId> {
    JobId::parse(s).with_context(|| format!("invalid job id {s:?}"))
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Train {
            data,
            label,
            task,
            compile,
        } => {
            let task = match task {
                TaskArg::Auto => Task::Auto,
                TaskArg::Classification => Task::Classification,
                TaskArg::Regression => Task::Regression,
            };
            let ds = read_labelled_csv(&data, &label, task)?;
            let (train, eval, on) = compile.split(&ds)?;
            let model = fhe_batch_train::train(&train, &TrainOptions::default())?;
            compile.compile_and_write(&model, &train, &eval, on)
        }
        Command::Import {
            onnx,
            data,
            label,
            compile,
        } => {
            let bytes =
                std::fs::read(&onnx).with_context(|| format!("reading {}", onnx.display()))?;
            let imported = fhe_batch_onnx::import_onnx(&bytes)
                .with_context(|| format!("importing {}", onnx.display()))?;
            println!(
                "{}: {} from {}",
                onnx.display(),
                imported.op_type,
                if imported.producer.is_empty() {
                    "an unnamed producer"
                } else {
                    &imported.producer
                }
            );
            let ds = read_labelled_csv(&data, &label, Task::Auto)?;
            let (calibration, eval, on) = compile.split(&ds)?;
            if let fhe_batch_onnx::FloatModel::Trees(e) = &imported.model {
                return compile_trees(e, &ds, &eval, on, &compile.out);
            }
            let model = fhe_batch_train::onnx::from_onnx(&imported, &ds)?;
            compile.compile_and_write(&model, &calibration, &eval, on)
        }
        Command::Keygen { out, force } => {
            let t = Instant::now();
            let key = SecretKey::generate(ParamSet::Glwe2048TUniform17);
            key.save(&out, force)?;
            println!(
                "secret key {} written to {} (owner-only, {}); fingerprint {}",
                key.params(),
                out.display(),
                output::dur(t.elapsed()),
                key.fingerprint()
            );
            println!("keep it private: it is the only way to read your results");
            Ok(())
        }
        Command::Encrypt {
            model,
            key: key_path,
            input,
            out,
            eval_key,
            chunk_records,
        } => {
            let side = store::read_client_side(&model)?;
            let key = SecretKey::load(&key_path)?;
            let t = Instant::now();
            let raw = read_records(&input, &side.client.feature_names)?;
            let records = raw.len() / side.client.n_features();
            let columns: Vec<u64> = raw
                .chunks_exact(side.client.n_features())
                .flat_map(|r| side.client.columns(r))
                .collect();
            let chunk_layout = store::chunk_layout(
                &side,
                key.params(),
                &key_path,
                eval_key.as_deref(),
                chunk_records,
            )?;
            let pb = local::bar(records as u64, "encrypt", true);
            let bytes = fhe_batch_fhe::batch::encrypt_batch_with(
                &key,
                &side.client,
                side.manifest.model_id,
                &columns,
                chunk_layout,
                &|n| pb.inc(n),
            );
            pb.finish_and_clear();
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "encrypted {records} records into {} ({}, {} per record) in {}",
                out.display(),
                output::bytes(bytes.len() as u64),
                output::bytes(bytes.len() as u64 / records as u64),
                output::dur(t.elapsed())
            );
            Ok(())
        }
        Command::PublishKey { key, store } => {
            let sk = SecretKey::load(&key)?;
            let t = Instant::now();
            let bytes = fhe_batch_fhe::forest::EvalKey::generate(&sk).to_bytes();
            let id = fhe_batch_fhe::forest::eval_key_id(&bytes);
            let generated = t.elapsed();
            let n = bytes.len() as u64;
            runtime()?.block_on(async {
                let s = store.open().await?;
                s.put_if_absent(&layout::eval_key(&id), bytes).await?;
                let saved = store::eval_key_file(&key);
                std::fs::write(&saved, format!("{id}\n"))
                    .with_context(|| format!("writing {}", saved.display()))?;
                println!(
                    "evaluation key {id} ({}, generated in {}) uploaded to {}/{}; its id is saved in {}",
                    output::bytes(n),
                    output::dur(generated),
                    s.describe(),
                    layout::eval_key(&id),
                    saved.display()
                );
                anyhow::Ok(())
            })
        }
        Command::Publish { model, store } => runtime()?.block_on(async {
            let s = store.open().await?;
            let m = store::publish_model_dir(&model, &s).await?;
            println!(
                "published model {} to {}/models/{}/",
                m.model_id,
                s.describe(),
                m.model_id
            );
            Ok(())
        }),
        Command::Submit { batch, job, store } => {
            let job = match job {
                Some(j) => job_arg(&j)?,
                None => {
                    let stem = batch
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .context("batch file name")?;
                    job_arg(stem)?
                }
            };
            let bytes =
                std::fs::read(&batch).with_context(|| format!("reading {}", batch.display()))?;
            let n = bytes.len() as u64;
            runtime()?.block_on(async {
                let s = store.open().await?;
                s.put(&layout::inbox(&job), bytes).await?;
                println!(
                    "uploaded {} ({}) to {}/{} as job {job}",
                    batch.display(),
                    output::bytes(n),
                    s.describe(),
                    layout::inbox(&job)
                );
                anyhow::Ok(())
            })
        }
        Command::Run { workers, store } => {
            if store.bucket.is_some() {
                bail!(
                    "`run` drives the local pipeline; on AWS the deployed functions do this work"
                );
            }
            let s = FsStore::open(&store.store)?;
            let report = runtime()?.block_on(local::run_local(&s, workers, true))?;
            for o in &report.ingested {
                match o {
                    IngestOutcome::Queued { job, chunks } => {
                        println!("job {job}: queued {chunks} chunks")
                    }
                    IngestOutcome::Requeued { job, chunks } => {
                        println!(
                            "job {job}: already ingested; re-queued {chunks} unfinished chunks"
                        )
                    }
                    IngestOutcome::Rejected { job, reason } => {
                        println!("job {job}: FAILED: {reason}")
                    }
                    IngestOutcome::Ignored { .. } => {}
                }
            }
            println!(
                "{} chunk results written, {} already done, {} failed, in {}",
                report.written,
                report.duplicates,
                report.failed,
                output::dur(report.work_time)
            );
            Ok(())
        }
        Command::Ingest { keys, remote } => runtime()?.block_on(remote::ingest(&remote, keys)),
        Command::Worker {
            concurrency,
            max_receives,
            idle_exit_secs,
            remote,
        } => runtime()?.block_on(remote::worker(
            &remote,
            concurrency,
            max_receives,
            idle_exit_secs.map(std::time::Duration::from_secs),
        )),
        Command::Status { job, json, store } => {
            let rt = runtime()?;
            let s = rt.block_on(store.open())?;
            let jobs = match job {
                Some(j) => vec![job_arg(&j)?],
                None => rt.block_on(list_jobs(&s))?,
            };
            if jobs.is_empty() {
                println!("no jobs in {}", s.describe());
            }
            for job in jobs {
                let st = rt.block_on(job_status(&s, &job))?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&st)?);
                } else {
                    println!("{}", demo::status_line(&st));
                    for f in &st.failures {
                        match f.chunk {
                            Some(c) => println!("  chunk {c}: {}", f.reason),
                            None => println!("  {}", f.reason),
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Decrypt {
            model,
            key,
            job,
            results,
            out,
            store,
        } => {
            let side = store::read_client_side(&model)?;
            let key = SecretKey::load(&key)?;
            let files = match (job, results) {
                (Some(j), None) => runtime()?.block_on(async {
                    let s = store.open().await?;
                    store::read_results_from_store(&s, &job_arg(&j)?).await
                })?,
                (None, Some(dir)) => store::read_result_dir(&dir)?,
                _ => bail!("pass --job JOB (read from the bucket) or --results DIR"),
            };
            let t = Instant::now();
            let logits = fhe_batch_fhe::batch::decrypt_job(
                &key,
                &side.client,
                &side.manifest.model_id,
                &files,
                &|_| {},
            )?;
            let n = output::write_predictions(&out, &side.client, &logits)?;
            println!(
                "decrypted {n} predictions into {} in {}",
                out.display(),
                output::dur(t.elapsed())
            );
            Ok(())
        }
        Command::Fetch { job, out, store } => {
            let job = job_arg(&job)?;
            runtime()?.block_on(async {
                let s = store.open().await?;
                let st = job_status(&s, &job).await?;
                if st.state != fhe_batch_core::job::JobState::Succeeded {
                    bail!("{}: results are not complete yet", demo::status_line(&st));
                }
                std::fs::create_dir_all(&out)?;
                let files = store::read_results_from_store(&s, &job).await?;
                let mut total = 0;
                for (key, bytes) in &files {
                    let name = key.rsplit('/').next().unwrap_or(key);
                    total += bytes.len() as u64;
                    std::fs::write(out.join(name), bytes)?;
                }
                println!(
                    "fetched {} result files ({}) of job {job} into {}",
                    files.len(),
                    output::bytes(total),
                    out.display()
                );
                Ok(())
            })
        }
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
