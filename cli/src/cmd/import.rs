//! `fhe-batch import`: compile a model trained elsewhere and exported to ONNX. The train
//! crate's [`compile_imported`] does the compiling for every family it reads; this module reads
//! the files, prints the report and writes the package.

use super::common::CompileArgs;
use crate::{output, store};
use anyhow::{Context, Result};
use fhe_batch_core::budget::ChunkBudget;
use fhe_batch_core::params::ParamSet;
use fhe_batch_train::Task;
use fhe_batch_train::data::{CellRules, read_labelled_csv_with};
use fhe_batch_train::import::{
    ImportData, ImportOptions, ImportSummary, TreeSummary, compile_imported,
};
use fhe_batch_train::metrics::RegressionErrors;
use fhe_batch_train::mlp::MlpSummary;
use std::path::PathBuf;

/// Import a model trained in Python and exported to ONNX (skl2onnx, onnxmltools) and compile
/// it for encrypted inference, like `train` does for its own models.
///
/// Reads LinearClassifier, LinearRegressor, TreeEnsembleClassifier and
/// TreeEnsembleRegressor graphs (scikit-learn, XGBoost, LightGBM), with per-feature affine
/// preprocessing in front (StandardScaler, MinMaxScaler: folded into the weights or the
/// thresholds) and trivial operations on the scores after, and dense neural networks (MatMul+Add or Gemm layers with
/// Relu, Tanh or Sigmoid, a scaler in front: scikit-learn MLPs, PyTorch nn.Sequential), and
/// names anything else it cannot read. Linear models
/// are quantized against --data (a labelled CSV whose feature columns are the model's
/// inputs, in order), proven exact and written like `train` writes them. Tree ensembles
/// are compiled for evaluation with programmable bootstrapping: thresholds become
/// thermometer bits the client encrypts, the leaf resolution is measured on the calibration
/// records (the coarsest that keeps the float model's labels and scores), the trees are
/// grouped into as many score slots as that resolution needs (the client adds the groups),
/// leaves are quantized to what those slots carry exactly, and the bootstrap plan is proven;
/// data owners then need an evaluation key
/// (`fhe-batch publish-key`). Neural networks are quantized against --data (--n-bits input
/// bits), one bootstrap per hidden neuron applies bias, activation and requantization, and
/// the compile proves each neuron's input range and the scores' error bound.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The .onnx file.
    #[arg(long)]
    onnx: PathBuf,
    /// Labelled CSV: the model's features (in its input order) and the label column.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "label")]
    label: String,
    /// Tree ensembles: give each tree's leaves at least this many integers (1..=65535) instead
    /// of the resolution measured on --data. Finer leaves cost result slots (bytes down, packing
    /// work) and, for a single-output model past what one slot digit holds (a few hundred
    /// integers), the bootstraps that a leaf beside a pair of leaves shares with them; coarser
    /// ones cost score error, reported as accuracy or MAE/R^2.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65535))]
    leaf_range: Option<u64>,
    #[command(flatten)]
    compile: CompileArgs,
}

pub fn run(args: ImportArgs) -> Result<()> {
    let onnx = &args.onnx;
    let bytes = std::fs::read(onnx).with_context(|| format!("reading {}", onnx.display()))?;
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
    for f in &imported.folded {
        println!("  {f}");
    }
    if let Some(p) = &imported.prefix {
        println!(
            "  client-side preprocessing ({}): runs on the data owner's machine before quantization, {} raw columns to {} model features{}",
            p.describe(),
            p.inputs,
            p.outputs()?,
            if p.imputes() {
                "; missing cells are imputed"
            } else {
                ""
            }
        );
        for t in &p.text {
            println!(
                "  text column {}: {} categories ({}){}",
                imported
                    .columns
                    .as_ref()
                    .and_then(|c| c.get(t.column))
                    .map_or_else(|| format!("#{}", t.column), |n| format!("{n:?}")),
                t.categories.len(),
                t.categories
                    .iter()
                    .take(6)
                    .map(|c| format!("{c:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if t.unknown_allowed {
                    "; other texts are ignored"
                } else {
                    "; other texts are refused"
                }
            );
        }
    }
    // The label column is read as the model's task says: digits 0-9 are classes for a
    // classifier, numbers for a regressor.
    let task = match imported.model.task() {
        fhe_batch_onnx::OnnxTask::Classifier { .. } => Task::Classification,
        fhe_batch_onnx::OnnxTask::Regressor { .. } => Task::Regression,
    };
    let ds = read_labelled_csv_with(
        &args.data,
        &args.label,
        task,
        CellRules::of(imported.prefix.as_ref()),
    )?;
    // A data frame's export names its columns: the CSV must hold them in that order.
    if let Some(columns) = &imported.columns
        && columns != &ds.feature_names
    {
        anyhow::bail!(
            "{} has feature columns {} but the model reads {}, in this order; write the CSV with those columns (and the label)",
            args.data.display(),
            ds.feature_names.join(", "),
            columns.join(", ")
        );
    }
    let (calibration, eval, on) = args.compile.split(&ds)?;
    let data = ImportData {
        all: &ds,
        calibration: &calibration,
        eval: &eval,
        evaluated_on: on,
    };
    let options = ImportOptions {
        n_bits: args.compile.n_bits,
        params: ParamSet::Glwe2048TUniform17,
        leaf_range: args.leaf_range,
    };
    let compiled = compile_imported(&imported, data, &options)?;
    let (pkg, out) = (&compiled.package, &args.compile.out);
    match &compiled.summary {
        ImportSummary::Linear => {
            store::write_model_dir(pkg, out)?;
            output::print_model(pkg);
            if let Some(r) = &compiled.regression {
                print_regression(r, on);
            }
            println!("model written to {}", out.display());
        }
        ImportSummary::NeuralNetwork(m) => {
            print_mlp(m, on);
            store::write_model_dir(pkg, out)?;
            println!(
                "model {} written to {}; data owners need an evaluation key: `fhe-batch publish-key`",
                pkg.manifest.model_id,
                out.display()
            );
        }
        ImportSummary::TreeEnsemble(t) => {
            print_trees(t, on);
            if let Some(r) = &compiled.regression {
                print_regression(r, on);
            }
            store::write_model_dir(pkg, out)?;
            println!(
                "model {} written to {}; data owners need an evaluation key: `fhe-batch publish-key`",
                pkg.manifest.model_id,
                out.display()
            );
        }
    }
    Ok(())
}

/// A compiled tree ensemble's report: its size, its bootstrap plan, the time it should take,
/// and its accuracy when the data set's labels are the model's classes.
fn print_trees(t: &TreeSummary, on: &str) {
    println!(
        "  {} trees, depth <= {}, {} leaves; {} thermometer bits per record ({} B up)",
        t.trees,
        t.max_depth,
        t.leaves,
        t.thermometer_bits,
        t.thermometer_bits * 8,
    );
    if let Some(r) = &t.resolution {
        let chosen = r.trials.iter().find(|x| x.leaf_range == r.leaf_range);
        println!(
            "  leaf resolution wanted: {} integers per tree (RMS score error {:.2}% of the scores' standard deviation, label agreement {:.1}% with float on the calibration records)",
            r.leaf_range,
            chosen.map_or(0.0, |x| 100.0 * x.score_rms_error
                / r.score_sd.max(f64::MIN_POSITIVE)),
            chosen.map_or(0.0, |x| 100.0 * x.agreement)
        );
    }
    println!(
        "  {} bootstraps per record ({} lookup tables each); {} tree group(s) of <= {} trees, {} score slots of {} bits, leaves spread over {} integers",
        t.pbs_per_record,
        t.functions,
        t.groups,
        t.trees_per_group,
        t.score_slots,
        t.slot_bits,
        t.leaf_range
    );
    let budget = ChunkBudget::default();
    println!(
        "  budgeted {:.2} s per record on a 2-vCPU worker at {} bootstraps/s (ingest's chunk-sizing budget, FHE_BATCH_WORKER_PBS_PER_SECOND; `fhe-batch bench --trees` measures this machine); chunks of {} records (~{:.0} s each)",
        budget.chunk_seconds(1, t.pbs_per_record as u64),
        budget.pbs_per_second,
        t.records_per_chunk,
        budget.chunk_seconds(t.records_per_chunk as u64, t.pbs_per_record as u64)
    );
    println!(
        "  evaluation key: about 64 MB per data owner, uploaded once (tfhe's compressed server key and a packing key)"
    );
    if let Some(r) = &t.report {
        println!(
            "  on {} {on} records: float accuracy {:.1}%, quantized {:.1}%, agreement {:.1}%",
            r.records,
            r.float_accuracy * 100.0,
            r.quantized_accuracy * 100.0,
            r.agreement * 100.0
        );
    }
}

/// A compiled network's report: its shape, its bootstraps and their resolution, the time it
/// should take, and float against quantized accuracy (or R^2) with the estimated agreement.
pub(crate) fn print_mlp(m: &MlpSummary, on: &str) {
    let shape: Vec<String> = m.layers.iter().map(|w| w.to_string()).collect();
    println!(
        "  network {} ({}), inputs quantized to {} bits ({} B up per record)",
        shape.join("-"),
        m.activations.join(", "),
        m.input_bits,
        m.layers[0] * 8
    );
    for (i, (span, noise)) in m
        .min_span_positions
        .iter()
        .zip(&m.max_noise_positions)
        .enumerate()
    {
        println!(
            "  hidden layer {}: {} bootstraps on tfhe's PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128, inputs spread over >= {span} of 4096 positions, noise window <= {noise}",
            i + 1,
            m.layers[i + 1],
        );
    }
    let budget = ChunkBudget::default();
    println!(
        "  {} bootstraps per record: budgeted {:.2} s per record on a 2-vCPU worker at {} bootstraps/s (ingest's chunk-sizing budget, FHE_BATCH_WORKER_PBS_PER_SECOND; `fhe-batch bench --mlp` measures this machine); chunks of {} records (~{:.0} s each)",
        m.pbs_per_record,
        budget.chunk_seconds(1, m.pbs_per_record as u64),
        budget.pbs_per_second,
        m.records_per_chunk,
        budget.chunk_seconds(m.records_per_chunk as u64, m.pbs_per_record as u64)
    );
    println!(
        "  proven worst-case score error {:.2}% of the score range (every neuron's deviation added with the same sign; typical errors are far smaller, see the agreement below); evaluation key about 64 MB per data owner, uploaded once",
        m.score_error_ratio * 100.0
    );
    let r = &m.report;
    match &m.errors {
        None => println!(
            "  on {} {on} records: float accuracy {:.2}%, quantized {:.2}%, quantized agrees with float on {:.1}%, encrypted (simulated noise) agrees with quantized on {:.1}% and is right on {:.2}%",
            r.records,
            r.float_score * 100.0,
            r.quantized_score * 100.0,
            r.agreement * 100.0,
            m.simulated_agreement * 100.0,
            m.simulated_accuracy.unwrap_or(f64::NAN) * 100.0
        ),
        Some(e) => print_regression(e, on),
    }
}

/// A regressor's error figures, float against quantized (against encrypted with simulated
/// noise for networks), on the evaluation records.
pub(crate) fn print_regression(e: &RegressionErrors, on: &str) {
    let line = |what: &str, f: &fhe_batch_train::metrics::ErrorFigures| {
        println!(
            "    {what:<28} MAE {:.4}  RMSE {:.4}  R^2 {:.4}",
            f.mae, f.rmse, f.r2
        )
    };
    println!(
        "  on {} {on} records (quantized within 1% of the target range of float on {:.1}%):",
        e.records,
        e.agreement * 100.0
    );
    line("float", &e.float);
    line("quantized (integer reference)", &e.quantized);
    if let Some(s) = &e.encrypted_simulated {
        line("encrypted (simulated noise)", s);
    }
}
