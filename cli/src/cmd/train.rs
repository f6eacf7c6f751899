//! `fhe-batch train` (alias `compile`): train a linear model on a labelled CSV, then quantize,
//! prove and write it.

use super::common::CompileArgs;
use crate::{output, store};
use anyhow::Result;
use clap::ValueEnum;
use fhe_batch_core::params::ParamSet;
use fhe_batch_train::data::read_labelled_csv;
use fhe_batch_train::{Task, TrainOptions};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TaskArg {
    /// Classification when the label column has any non-numeric value, else regression.
    Auto,
    Classification,
    Regression,
}

impl From<TaskArg> for Task {
    fn from(t: TaskArg) -> Task {
        match t {
            TaskArg::Auto => Task::Auto,
            TaskArg::Classification => Task::Classification,
            TaskArg::Regression => Task::Regression,
        }
    }
}

/// Train a model on a labelled CSV and compile it for encrypted inference.
///
/// Logistic regression (binary or multinomial) for class labels, linear regression for a
/// numeric target. Inputs are quantized per feature to --n-bits and weights to signed
/// --n-bits integers; the compiler proves from the weights that no encrypted result can
/// overflow or be corrupted by noise, and refuses the model otherwise. Writes
/// manifest.json, server.bin (weights: for the service) and client.json (features,
/// quantization, classes: for data owners; no weights).
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
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
}

pub fn run(args: TrainArgs) -> Result<()> {
    let ds = read_labelled_csv(&args.data, &args.label, args.task.into())?;
    let (train, eval, on) = args.compile.split(&ds)?;
    let model = fhe_batch_train::train(&train, &TrainOptions::default())?;
    let mut pkg = fhe_batch_train::compile(
        &model,
        &train,
        &eval,
        args.compile.n_bits,
        ParamSet::Glwe2048TUniform17,
    )?;
    pkg.manifest.report.evaluated_on = on.into();
    store::write_model_dir(&pkg, &args.compile.out)?;
    output::print_model(&pkg);
    println!("model written to {}", args.compile.out.display());
    Ok(())
}
