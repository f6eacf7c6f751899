//! One compile entry point for models imported from ONNX, whatever their family: a linear
//! model is converted ([`crate::onnx::from_onnx`], a scaler in front folded into its weights)
//! and compiled like a trained one ([`crate::compile`]); a tree ensemble (a scaler in front
//! already folded into its thresholds by `fhe-batch-onnx`) is quantized, planned and packaged
//! ([`crate::trees`]); a network is compiled by [`crate::mlp`]. Either way the caller gets the
//! package to write and the figures to report, as [`crate::train`] + [`crate::compile`] give
//! them for trained models; regressors also get their error figures ([`RegressionErrors`]).

use crate::data::{Dataset, Target};
use crate::metrics::{RegressionErrors, regression_errors};
use crate::model::TrainError;
use crate::trees::{
    ResolutionChoice, TreeReport, labelled_rows, package_forest, quantize_trees, quantize_trees_on,
    tree_report,
};
use fhe_batch_core::budget::ChunkBudget;
use fhe_batch_core::model::{ClientPrefix, ModelError, ModelPackage};
use fhe_batch_core::params::ParamSet;
use fhe_batch_onnx::{FloatModel as OnnxModel, Imported, TreeEnsemble};

/// The records an import is compiled and reported on.
#[derive(Debug, Clone, Copy)]
pub struct ImportData<'a> {
    /// The whole labelled data set: it names the model's features (in its input order), the
    /// target and the classes.
    pub all: &'a Dataset,
    /// The records linear models are quantized against (tree ensembles need none: their
    /// thresholds are compared exactly).
    pub calibration: &'a Dataset,
    /// The records the compile report is on...
    pub eval: &'a Dataset,
    /// ...and what they are, for the report ("holdout", "all records").
    pub evaluated_on: &'a str,
}

/// How an imported model is compiled.
#[derive(Debug, Clone, Copy)]
pub struct ImportOptions {
    /// Bits per quantized input and per integer weight of linear models (tree ensembles size
    /// their leaves from the score slots instead).
    pub n_bits: u8,
    pub params: ParamSet,
    /// Tree ensembles: at least this many integers per tree's leaves, instead of the
    /// resolution measured on the calibration records. Finer leaves cost result slots (bytes
    /// down and packing work) and, for single-output models past one slot digit, merged
    /// bootstraps ([`fhe_batch_core::tree::plan_layout`]); coarser ones cost score error
    /// (reported).
    pub leaf_range: Option<u64>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            n_bits: 8,
            leaf_range: None,
            params: ParamSet::Glwe2048TUniform17,
        }
    }
}

/// What compiling a tree ensemble decided, for the compile report.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeSummary {
    pub trees: usize,
    pub max_depth: usize,
    pub leaves: usize,
    /// Thermometer bits per record: one encrypted input column each.
    pub thermometer_bits: usize,
    pub pbs_per_record: usize,
    /// Lookup tables evaluated per bootstrap.
    pub functions: u8,
    pub score_slots: u32,
    pub slot_bits: u8,
    /// How many integers one tree's leaves spread over.
    pub leaf_range: u64,
    /// Tree groups, each summing into its own score slots (the client adds them), and the
    /// largest group's tree count.
    pub groups: usize,
    pub trees_per_group: usize,
    /// The leaf resolution the calibration records called for (what the groups were sized
    /// from); `None` when they do not fit the model (the default resolution is used).
    pub resolution: Option<ResolutionChoice>,
    /// Records per chunk at the parameters' polynomial size.
    pub records_per_chunk: usize,
    /// Float against quantized accuracy (classifiers whose labels match the data set's).
    pub report: Option<TreeReport>,
}

/// What was compiled, beyond the package's own manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum ImportSummary {
    /// A linear model: its manifest carries the report and the proven bounds.
    Linear,
    TreeEnsemble(TreeSummary),
    NeuralNetwork(crate::mlp::MlpSummary),
}

/// A compiled import: the package to write, and the figures to report.
#[derive(Debug, Clone)]
pub struct CompiledImport {
    pub package: ModelPackage,
    pub summary: ImportSummary,
    /// Regressors: float against quantized MAE, RMSE and R^2 on the evaluation records.
    pub regression: Option<RegressionErrors>,
}

/// A data set's rows through a client-side prefix: the features the model reads. Rows the
/// prefix cannot take (a missing value it does not impute, an unknown category it refuses) fail
/// the whole set, every one named.
pub fn through_prefix(ds: &Dataset, prefix: &ClientPrefix) -> Result<Dataset, TrainError> {
    if ds.n_features() != prefix.inputs {
        return Err(TrainError::Unsupported(format!(
            "the model's pipeline reads {} columns; the data has {} feature columns ({})",
            prefix.inputs,
            ds.n_features(),
            ds.feature_names.join(", ")
        )));
    }
    let mut x = Vec::new();
    let mut bad = Vec::new();
    for i in 0..ds.len() {
        match prefix.apply(ds.row(i)) {
            Ok(f) => x.extend(f),
            Err(e) => bad.push((i + 1, e)),
        }
    }
    if !bad.is_empty() {
        return Err(TrainError::Model(ModelError::refused_records(&bad)));
    }
    let width = prefix
        .outputs()
        .map_err(|e| TrainError::Unsupported(e.to_string()))?;
    Ok(Dataset {
        feature_names: (0..width).map(|j| format!("preprocessed_{j}")).collect(),
        target_name: ds.target_name.clone(),
        x,
        y: ds.y.clone(),
    })
}

/// Compiles the model behind a client-side prefix on the prefix's outputs, then packages it
/// with the prefix in its client part (which reads the data set's raw columns).
fn compile_with_prefix(
    imported: &Imported,
    prefix: &ClientPrefix,
    data: ImportData<'_>,
    options: &ImportOptions,
) -> Result<CompiledImport, TrainError> {
    let all = through_prefix(data.all, prefix)?;
    let calibration = through_prefix(data.calibration, prefix)?;
    let eval = through_prefix(data.eval, prefix)?;
    let inner = Imported {
        prefix: None,
        ..imported.clone()
    };
    let mut compiled = compile_imported(
        &inner,
        ImportData {
            all: &all,
            calibration: &calibration,
            eval: &eval,
            evaluated_on: data.evaluated_on,
        },
        options,
    )?;
    let pkg = &compiled.package;
    let mut client = pkg.client.clone().with_prefix(prefix.clone());
    client.feature_names = data.all.feature_names.clone();
    compiled.package =
        ModelPackage::build(pkg.server.clone(), client, pkg.manifest.report.clone())?;
    Ok(compiled)
}

/// Compiles an imported model for encrypted evaluation, dispatching on its family.
pub fn compile_imported(
    imported: &Imported,
    data: ImportData<'_>,
    options: &ImportOptions,
) -> Result<CompiledImport, TrainError> {
    if let Some(prefix) = &imported.prefix {
        return compile_with_prefix(imported, prefix, data, options);
    }
    match &imported.model {
        OnnxModel::Trees(e) => compile_trees(e, data, options),
        OnnxModel::Mlp(m) if m.layers.len() > 1 => {
            let c = crate::mlp::compile_mlp(m, data, options)?;
            let mut summary = c.summary;
            summary.records_per_chunk = ChunkBudget::default()
                .records_per_chunk(summary.pbs_per_record, options.params.polynomial_size());
            Ok(CompiledImport {
                package: c.package,
                regression: summary.errors,
                summary: ImportSummary::NeuralNetwork(summary),
            })
        }
        // A linear model, or a network without hidden layers (compiled exactly as the linear
        // model it is).
        OnnxModel::Linear(_) | OnnxModel::Mlp(_) => {
            let model = crate::onnx::from_onnx(imported, data.all)?;
            let mut package = crate::compile(
                &model,
                data.calibration,
                data.eval,
                options.n_bits,
                options.params,
            )?;
            package.manifest.report.evaluated_on = data.evaluated_on.into();
            // Linear result values are the scores: the client part reads them directly.
            let quantized = |x: &[f64]| {
                let client = package.client.family_impl();
                client
                    .predict(&package.server.eval_plain(&client.columns(x)))
                    .scores[0]
            };
            let regression = regression_errors(data.eval, &|x| model.logits(x)[0], &quantized);
            Ok(CompiledImport {
                package,
                summary: ImportSummary::Linear,
                regression,
            })
        }
    }
}

/// Thresholds become the client's thermometer bits; the leaf resolution is measured on the
/// calibration records (the coarsest whose scores stay within tolerance of the float model's,
/// [`crate::trees::choose_leaf_range`]), the trees are grouped into the score slots that
/// resolution needs, leaves are quantized to what those slots carry exactly, and the bootstrap
/// plan is proven.
fn compile_trees(
    e: &TreeEnsemble,
    data: ImportData<'_>,
    options: &ImportOptions,
) -> Result<CompiledImport, TrainError> {
    let rows: Vec<Vec<f32>> = (0..data.calibration.len())
        .map(|i| data.calibration.row(i).iter().map(|&v| v as f32).collect())
        .collect();
    let (c, resolution) = if let Some(range) = options.leaf_range {
        (crate::trees::quantize_trees_at(e, range)?, None)
    } else if !rows.is_empty() && data.calibration.n_features() == e.n_features {
        let (c, choice) = quantize_trees_on(e, &rows)?;
        (c, Some(choice))
    } else {
        (quantize_trees(e)?, None)
    };
    // Accuracy is reported where the data set's labels are the model's classes.
    let report = labelled_rows(e, data.eval)
        .ok()
        .map(|rows| tree_report(e, &c, &rows));
    let class_names = match &data.all.y {
        Target::Classes { names, .. } => Some(names.as_slice()),
        _ => None,
    };
    let mut package = package_forest(
        e,
        &c,
        data.all.feature_names.clone(),
        data.all.target_name.clone(),
        class_names,
        report.as_ref(),
        data.evaluated_on,
    )?;
    // Regressors: error figures, and the package's report in R^2 as linear regressors have it.
    let float_model = fhe_batch_onnx::FloatModel::Trees(e.clone());
    let float = |x: &[f64]| {
        let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        float_model.predict(&x).scores[0] as f64
    };
    // The integer reference read out as the client reads decrypted scores.
    let quantized = |x: &[f64]| {
        let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        crate::trees::predict_quantized(e, &c.model, &x).scores[0] as f64
    };
    let regression = match (&e.task, &data.eval.y) {
        (fhe_batch_onnx::OnnxTask::Regressor { targets: 1 }, Target::Values(_))
            if e.n_features == data.eval.n_features() =>
        {
            let errors = regression_errors(data.eval, &float, &quantized);
            if let Some(r) = &errors {
                package.manifest.report = fhe_batch_core::model::CompileReport {
                    evaluated_on: data.evaluated_on.to_string(),
                    records: r.records,
                    float_score: r.float.r2,
                    quantized_score: r.quantized.r2,
                    agreement: r.agreement,
                };
            }
            errors
        }
        _ => None,
    };
    let pbs_per_record = c.plan.pbs_per_record();
    let summary = TreeSummary {
        trees: c.model.trees.len(),
        max_depth: c.model.max_depth(),
        leaves: e.trees.iter().map(|t| t.leaves()).sum(),
        thermometer_bits: c.model.thresholds.len(),
        pbs_per_record,
        functions: c.plan.functions,
        score_slots: c.plan.score_slots,
        slot_bits: c.plan.slot_bits,
        leaf_range: c.layout.leaf_range,
        groups: c.layout.groups,
        trees_per_group: c.layout.trees_per_group,
        resolution,
        records_per_chunk: ChunkBudget::default()
            .records_per_chunk(pbs_per_record, options.params.polynomial_size()),
        report,
    };
    Ok(CompiledImport {
        package,
        summary: ImportSummary::TreeEnsemble(summary),
        regression,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Task, read_labelled_csv};
    use std::path::PathBuf;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn breast_cancer() -> Dataset {
        read_labelled_csv(&root().join("data/breast_cancer.csv"), "label", Task::Auto).unwrap()
    }

    /// Compiles an import on `ds`, reported on a 20% holdout.
    fn compile_on(imported: &Imported, ds: &Dataset) -> CompiledImport {
        let (calibration, eval) = ds.split(0.2, 42);
        let data = ImportData {
            all: ds,
            calibration: &calibration,
            eval: &eval,
            evaluated_on: "holdout",
        };
        compile_imported(imported, data, &ImportOptions::default()).unwrap()
    }

    fn compile(onnx: &str) -> CompiledImport {
        let bytes = std::fs::read(root().join("tests/fixtures/onnx").join(onnx)).unwrap();
        compile_on(
            &fhe_batch_onnx::import_onnx(&bytes).unwrap(),
            &breast_cancer(),
        )
    }

    #[test]
    fn a_linear_import_compiles_like_a_trained_model() {
        let c = compile("bc-logistic.onnx");
        assert_eq!(c.summary, ImportSummary::Linear);
        assert_eq!(c.package.manifest.report.evaluated_on, "holdout");
    }

    /// A network without hidden layers (a logistic regression behind a scaler, as a dense
    /// graph) compiles as the exact linear model it is, predicting what the network predicts.
    #[test]
    fn a_network_without_hidden_layers_compiles_as_a_linear_model() {
        use fhe_batch_onnx::{Activation, Dense, FloatModel, Mlp, OnnxTask, Scaler};
        let ds = breast_cancer();
        let f = ds.n_features();
        let (mean, sd): (Vec<f32>, Vec<f32>) = crate::data::column_stats(&ds)
            .into_iter()
            .map(|(m, s)| (m as f32, 1.0 / s.max(1e-9) as f32))
            .unzip();
        let mlp = Mlp {
            task: OnnxTask::Classifier {
                labels: vec!["0".into(), "1".into()],
            },
            n_features: f,
            scaler: Some(Scaler {
                offset: mean,
                scale: sd,
            }),
            layers: vec![Dense {
                inputs: f,
                outputs: 1,
                weights: (0..f).map(|j| ((j % 7) as f32 - 3.0) * 0.3).collect(),
                bias: vec![0.2],
                activation: Activation::Identity,
            }],
            post: fhe_batch_onnx::PostTransform::Logistic,
        };
        let linear = crate::onnx::mlp_as_linear(&mlp);
        let as_linear = FloatModel::Linear(linear);
        let as_mlp = FloatModel::Mlp(mlp.clone());
        for i in 0..ds.len() {
            let x: Vec<f32> = ds.row(i).iter().map(|&v| v as f32).collect();
            let (a, b) = (as_linear.predict(&x), as_mlp.predict(&x));
            assert_eq!(a.label, b.label, "row {i}");
        }
        let imported = Imported {
            model: as_mlp,
            producer: "test".into(),
            op_type: "MLP".into(),
            folded: Vec::new(),
            prefix: None,
            columns: None,
        };
        let c = compile_on(&imported, &ds);
        assert_eq!(c.summary, ImportSummary::Linear);
        assert_eq!(c.package.manifest.pbs_per_record, 0);
    }

    #[test]
    fn a_tree_import_is_quantized_planned_and_packaged() {
        let c = compile("bc-tree-d4.onnx");
        let ImportSummary::TreeEnsemble(t) = &c.summary else {
            panic!("{:?}", c.summary)
        };
        // Depth 4: 7 pairs and lone leaves, one lone leaf beside a pair sharing its bootstrap.
        assert_eq!((t.trees, t.pbs_per_record), (1, 6));
        assert!(t.records_per_chunk > 0);
        let r = t
            .report
            .as_ref()
            .expect("a classifier with the data set's labels");
        assert!(r.quantized_accuracy > 0.8, "{r:?}");
        assert_eq!(c.package.manifest.report.evaluated_on, "holdout");
    }

    /// scikit-learn's forest at 200 trees of depth 8 (one score slot cannot hold it): the leaf
    /// resolution is measured on the calibration records, the trees are grouped into the
    /// slots that resolution needs, and quantized accuracy stays within one point of float.
    #[test]
    fn a_200_tree_depth_8_forest_imports_in_groups() {
        let c = compile("bc-rf-200x8.onnx");
        let ImportSummary::TreeEnsemble(t) = &c.summary else {
            panic!("{:?}", c.summary)
        };
        assert_eq!((t.trees, t.max_depth), (200, 8));
        let chosen = t
            .resolution
            .as_ref()
            .expect("measured on the calibration records");
        assert!(t.groups > 1 && t.leaf_range >= chosen.leaf_range, "{t:?}");
        assert_eq!(t.score_slots as usize, t.groups);
        assert!(t.trees_per_group * t.groups >= 200);
        assert_eq!(c.package.manifest.pbs_per_record, t.pbs_per_record as u64);
        let r = t.report.as_ref().expect("a classifier");
        assert!(
            r.quantized_accuracy >= r.float_accuracy - 0.01 && r.float_accuracy > 0.9,
            "{r:?}"
        );
    }

    /// Iris petal width from the other three measurements (the export script's regressors).
    fn iris_petal_width() -> Dataset {
        let iris = read_labelled_csv(&root().join("data/iris.csv"), "label", Task::Auto).unwrap();
        let rows: Vec<&[f64]> = (0..iris.len()).map(|i| iris.row(i)).collect();
        Dataset {
            feature_names: iris.feature_names[..3].to_vec(),
            target_name: iris.feature_names[3].clone(),
            x: rows.iter().flat_map(|r| r[..3].to_vec()).collect(),
            y: Target::Values(rows.iter().map(|r| r[3]).collect()),
        }
    }

    #[test]
    fn regressors_report_mae_rmse_and_r2_float_against_quantized() {
        let ds = iris_petal_width();
        let holdout = ds.split(0.2, 42).1.len();
        for name in [
            "iris-linear-regressor",
            "iris-scaler-linear-regressor",
            "iris-rf-regressor",
            "iris-minmax-rf-regressor",
            "iris-lgbm-regressor",
        ] {
            let bytes = std::fs::read(
                root()
                    .join("tests/fixtures/onnx")
                    .join(format!("{name}.onnx")),
            )
            .unwrap();
            let imported = fhe_batch_onnx::import_onnx(&bytes).unwrap();
            let c = compile_on(&imported, &ds);
            let r = c
                .regression
                .unwrap_or_else(|| panic!("{name}: no error figures"));
            eprintln!("{name}: {r:?}");
            assert_eq!(r.records, holdout);
            for e in [r.float, r.quantized] {
                // Petal width spans 0.1..2.5 cm: these models are within a few millimetres.
                assert!(e.mae > 0.0 && e.mae < 0.25, "{name}: {r:?}");
                assert!(e.rmse >= e.mae && e.rmse < 0.3, "{name}: {r:?}");
                assert!(e.r2 > 0.85 && e.r2 <= 1.0, "{name}: {r:?}");
            }
            assert!((r.float.r2 - r.quantized.r2).abs() < 0.02, "{name}: {r:?}");
            assert!(r.encrypted_simulated.is_none());
            // The package's report carries the same R^2 figures.
            let report = &c.package.manifest.report;
            assert_eq!(report.records, holdout, "{name}");
            assert!((report.float_score - r.float.r2).abs() < 1e-9, "{name}");
            assert!(
                (report.quantized_score - r.quantized.r2).abs() < 1e-9,
                "{name}"
            );
        }
    }

    #[test]
    fn a_scaler_in_front_of_a_linear_model_is_folded_into_its_weights() {
        let c = compile("bc-scaler-logistic.onnx");
        let r = &c.package.manifest.report;
        assert!(r.float_score > 0.93 && r.agreement > 0.97, "{r:?}");
        assert!(c.regression.is_none());
        // The same weights as the float pipeline: predictions agree with onnxruntime's labels.
        let bytes =
            std::fs::read(root().join("tests/fixtures/onnx/bc-scaler-logistic.onnx")).unwrap();
        let imported = fhe_batch_onnx::import_onnx(&bytes).unwrap();
        let ds =
            read_labelled_csv(&root().join("data/breast_cancer.csv"), "label", Task::Auto).unwrap();
        let folded = crate::onnx::from_onnx(&imported, &ds).unwrap();
        let (mut agree, n) = (0, ds.len());
        for i in 0..n {
            let x: Vec<f32> = ds.row(i).iter().map(|&v| v as f32).collect();
            let label = imported.model.predict(&x).label.unwrap();
            agree += usize::from(label == folded.predict_class(ds.row(i)).to_string());
        }
        assert!(agree >= n - 1, "{agree} of {n}");
    }
}
