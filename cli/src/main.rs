//! `fhe-batch`: the data owner's client for the fhe-batch encrypted-inference pipeline.
//!
//! Train and compile a model, generate a secret key, encrypt a CSV of records into a batch,
//! run the pipeline on the local bucket (or upload to S3), check status, and decrypt the
//! predictions. `fhe-batch demo` does all of it in one command.
//!
//! This file has the command line and the dispatch; each subcommand is a module of [`cmd`],
//! the demo is [`demo`] and the benchmarks, which are not part of the product's path, are
//! [`bench`].

mod bench;
mod cmd;
mod demo;
mod local;
mod output;
mod remote;
mod store;

use clap::{Parser, Subcommand};
use cmd::{
    decrypt, encrypt, fetch, import, ingest, keygen, publish, publish_key, retry, run, status,
    submit, train, worker,
};

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
///   fhe-batch retry claims                             # a FAILED job's unfinished chunks again
///   fhe-batch decrypt --model model/ --key client.key --job claims --out predictions.csv
///
/// Tree ensembles imported from ONNX (`fhe-batch import`) also need your evaluation key,
/// uploaded once: `fhe-batch publish-key --key client.key` before `encrypt`.
///
/// On AWS, add `--bucket NAME` to publish-key, publish, submit, status, fetch and decrypt --job
/// (and to retry, with --queue-url).
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

/// The subcommands; each one's help is the doc comment of its arguments struct.
#[derive(Subcommand, Debug)]
enum Command {
    #[command(alias = "compile")]
    Train(train::TrainArgs),
    Import(import::ImportArgs),
    Keygen(keygen::KeygenArgs),
    Encrypt(encrypt::EncryptArgs),
    PublishKey(publish_key::PublishKeyArgs),
    Publish(publish::PublishArgs),
    Submit(submit::SubmitArgs),
    Run(run::RunArgs),
    Status(status::StatusArgs),
    Retry(retry::RetryArgs),
    Fetch(fetch::FetchArgs),
    Decrypt(decrypt::DecryptArgs),
    Ingest(ingest::IngestArgs),
    Worker(worker::WorkerArgs),
    /// Run the whole product on the bundled Iris data, end to end, on the local bucket.
    Demo(demo::DemoArgs),
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
    if let Err(e) = dispatch(cli.command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Train(args) => train::run(args),
        Command::Import(args) => import::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Encrypt(args) => encrypt::run(args),
        Command::PublishKey(args) => publish_key::run(args),
        Command::Publish(args) => publish::run(args),
        Command::Submit(args) => submit::run(args),
        Command::Run(args) => run::run(args),
        Command::Status(args) => status::run(args),
        Command::Retry(args) => retry::run(args),
        Command::Fetch(args) => fetch::run(args),
        Command::Decrypt(args) => decrypt::run(args),
        Command::Ingest(args) => ingest::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
