//! `fhe-batch demo`: the whole product, end to end, on the embedded default: a model owner
//! trains and compiles, a data owner generates a key and encrypts records, the local
//! pipeline evaluates them, and the data owner decrypts and checks every prediction against
//! the plaintext models. Each step is one phase in [`phases`]; the check and the closing
//! report are in [`report`].

use anyhow::{Context, Result, bail};
use fhe_batch_core::ids::JobId;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Prints unless the demo runs quietly (the benchmark runs it so).
macro_rules! say {
    ($quiet:expr, $($arg:tt)*) => {
        if !$quiet {
            println!($($arg)*);
        }
    };
}

mod mlp;
mod phases;
mod report;

/// The bundled Iris data set (CC BY 4.0, see data/README.md).
pub const IRIS_CSV: &str = include_str!("../../../data/iris.csv");
/// The bundled breast-cancer data set (CC BY 4.0, see data/README.md).
pub const BREAST_CANCER_CSV: &str = include_str!("../../../data/breast_cancer.csv");

/// Which model the demo runs.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DemoModel {
    /// Logistic regression on Iris (no bootstrap: every record exact).
    #[default]
    Linear,
    /// A neural network (784-128-10) on MNIST digits, one bootstrap per hidden neuron.
    Mlp,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// The model: `linear` (Iris, the default) or `mlp` (MNIST digits).
    #[arg(long, value_enum, default_value_t = DemoModel::Linear)]
    pub model: DemoModel,
    /// Records to push through the pipeline. Linear: 150 uses the real Iris records; more
    /// draws synthetic records like them (up to 100,000,000). Mlp: test digits (1..=2,000,
    /// about 1.4 s each on 2 cores; 150 is taken as the default 16).
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

/// Figures of one demo run, for the benchmark.
pub struct DemoSummary {
    pub records: usize,
    pub up_bytes: u64,
    pub down_bytes: u64,
    pub exact: usize,
    /// Seconds per phase, in order.
    pub phases: Vec<(&'static str, Duration)>,
}

/// What every phase needs: the arguments, where to write, whether to print, and the clock.
struct Demo<'a> {
    args: &'a DemoArgs,
    dir: &'a Path,
    quiet: bool,
    job: JobId,
    /// Time per phase, in the order they ran.
    phases: Vec<(&'static str, Duration)>,
}

impl Demo<'_> {
    /// Records the time of phase `name`, which started at `t`.
    fn lap(&mut self, name: &'static str, t: Instant) {
        self.phases.push((name, t.elapsed()));
    }
}

pub fn run(args: DemoArgs) -> Result<()> {
    if args.model == DemoModel::Mlp {
        let records = if args.records == 150 {
            16
        } else {
            args.records
        };
        return mlp::run(records, args.workers, &args.dir);
    }
    run_with(&args, false).map(|_| ())
}

/// Runs the demo; `quiet` suppresses all output (the benchmark uses it).
pub fn run_with(args: &DemoArgs, quiet: bool) -> Result<DemoSummary> {
    if args.records == 0 || args.records > 100_000_000 {
        bail!("--records must be between 1 and 100,000,000");
    }
    let total = Instant::now();
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("emptying {}", args.dir.display()))?;
    }
    std::fs::create_dir_all(&args.dir)?;
    let mut demo = Demo {
        args,
        dir: &args.dir,
        quiet,
        job: JobId::parse("iris-demo").expect("valid"),
        phases: Vec::new(),
    };
    say!(
        quiet,
        "fhe-batch demo: encrypted Iris classification, end to end, on a local bucket"
    );
    say!(quiet, "working directory {}\n", demo.dir.display());

    let trained = demo.train_and_compile()?;
    let key = demo.keygen()?;
    let mut encrypted = demo.encrypt(&trained, &key)?;
    let rt = crate::cmd::common::runtime()?;
    let bucket = demo.upload(&rt, &trained, std::mem::take(&mut encrypted.batch))?;
    demo.run_pipeline(&rt, &bucket)?;
    let decrypted = demo.fetch_and_decrypt(&rt, &bucket, &key, &encrypted)?;
    let check = report::check(&trained, &encrypted, &decrypted)?;
    report::print(&demo, &encrypted, &decrypted, &check, total);
    report::finish(demo, encrypted, decrypted, check)
}
