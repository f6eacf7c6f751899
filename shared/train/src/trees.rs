//! Quantizing an imported tree ensemble: thresholds become the client's thermometer bits and
//! leaf weights become integers at one common scale; the compile report compares the float
//! model with the quantized one on labelled records.

use crate::model::TrainError;
use fhe_batch_core::model::{
    ClientBody, ClientModel, CompileReport, ModelPackage, ServerBody, ServerModel,
};
use fhe_batch_core::params::ParamSet;
use fhe_batch_core::tree::{
    ForestClient, ForestPlan, Layout, MAX_LEAF_RANGE, QNode, QTree, SlotReadout, Threshold,
    TreeModel, build_plan_in, plan_layout,
};
use fhe_batch_onnx::{Cmp, FloatPrediction, Node, TreeEnsemble};
use std::collections::BTreeMap;

/// The parameter set tree ensembles are compiled and bootstrapped under.
pub const TREE_PARAMS: ParamSet = ParamSet::Glwe2048TUniform17;

/// A compiled ensemble: the quantized trees (integer reference), the server's bootstrap plan
/// and the client's slot readout.
#[derive(Debug, Clone)]
pub struct CompiledForest {
    pub model: TreeModel,
    pub layout: Layout,
    pub plan: ForestPlan,
    pub readout: SlotReadout,
}

/// The leaf range asked for when no records are at hand to measure what resolution buys
/// ([`choose_leaf_range`]): 3 bits per tree and output. Every single-slot layout of the sample
/// ensembles already gives at least this (12 to 65,535), so their plans are those of the
/// single-slot layout.
pub const DEFAULT_MIN_LEAF_RANGE: u64 = 7;

/// The RMS error quantization may add to a record's raw scores, as a fraction of the float
/// scores' standard deviation over the records ([`choose_leaf_range`]).
pub const SCORE_ERROR_TOLERANCE: f64 = 0.02;

/// Quantizes `e` for encrypted evaluation with at least [`DEFAULT_MIN_LEAF_RANGE`] integers
/// per tree's leaves: [`quantize_trees_at`].
pub fn quantize_trees(e: &TreeEnsemble) -> Result<CompiledForest, TrainError> {
    quantize_trees_at(e, DEFAULT_MIN_LEAF_RANGE)
}

/// Quantizes `e` for encrypted evaluation: the trees are grouped into the fewest groups of
/// score slots whose slots give every tree's leaves at least `min_leaf_range` integers
/// ([`plan_layout`]: one group whenever a single slot per output does; the noise of the summed
/// bootstrap outputs decides the slot width), leaves are quantized to the widest spread those
/// slots carry exactly, then the bootstrap plan is built and proven ([`build_plan_in`]).
pub fn quantize_trees_at(
    e: &TreeEnsemble,
    min_leaf_range: u64,
) -> Result<CompiledForest, TrainError> {
    let shaped = structure(e, |_| vec![0; e.n_scores]);
    let layout = plan_layout(&shaped.trees, e.n_scores, TREE_PARAMS, min_leaf_range)
        .map_err(|err| TrainError::Unsupported(err.to_string()))?;
    let model = quantize_with_range(e, layout.leaf_range)?;
    let (plan, readout) = build_plan_in(&model, &layout, TREE_PARAMS)
        .map_err(|err| TrainError::Unsupported(err.to_string()))?;
    Ok(CompiledForest {
        model,
        layout,
        plan,
        readout,
    })
}

/// What one leaf range buys on a set of records, against the float model.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolutionTrial {
    pub leaf_range: u64,
    /// RMS over records and outputs of (quantized - float) raw score.
    pub score_rms_error: f64,
    /// Fraction of records whose quantized prediction equals the float one.
    pub agreement: f64,
}

/// The leaf range [`choose_leaf_range`] picked, and the trials it was picked from.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolutionChoice {
    pub leaf_range: u64,
    /// Standard deviation of the float raw scores over the records (RMS over outputs).
    pub score_sd: f64,
    /// The finest range's trial first (the agreement to match), then the ladder up to the
    /// chosen range.
    pub trials: Vec<ResolutionTrial>,
}

/// Measures on `rows` (records in the model's feature order) what leaf resolution buys, and
/// picks the coarsest leaf range of the ladder 1, 3, 7, ..., 65,535 whose quantized model
/// (a) predicts the float model's label on as many records as the finest range does and
/// (b) adds an RMS raw-score error of at most [`SCORE_ERROR_TOLERANCE`] of the float scores'
/// standard deviation. The planner then groups the trees so that every tree gets at least that
/// range ([`quantize_trees_at`]): the resolution decides the slots, not the reverse.
pub fn choose_leaf_range(
    e: &TreeEnsemble,
    rows: &[Vec<f32>],
) -> Result<ResolutionChoice, TrainError> {
    if rows.is_empty() || rows.iter().any(|r| r.len() != e.n_features) {
        return Err(TrainError::Unsupported(format!(
            "choosing the leaf resolution needs records of {} features",
            e.n_features
        )));
    }
    let float: Vec<Vec<f32>> = rows.iter().map(|x| e.raw_scores(x)).collect();
    let labels: Vec<Option<String>> = float.iter().map(|s| e.finish(s.clone()).label).collect();
    let n = rows.len() as f64;
    let outputs = e.n_scores.max(1);
    let variance: f64 = (0..outputs)
        .map(|o| {
            let mean = float.iter().map(|s| s[o] as f64).sum::<f64>() / n;
            float
                .iter()
                .map(|s| (s[o] as f64 - mean).powi(2))
                .sum::<f64>()
                / n
        })
        .sum::<f64>()
        / outputs as f64;
    let score_sd = variance.sqrt();
    let trial = |range: u64| -> Result<ResolutionTrial, TrainError> {
        let q = quantize_with_range(e, range)?;
        let (mut err2, mut agree) = (0f64, 0usize);
        for (x, (f, label)) in rows.iter().zip(float.iter().zip(&labels)) {
            let raw: Vec<f32> = q
                .eval_plain(&q.bits(x))
                .iter()
                .map(|&v| (v as f64 * q.scale) as f32)
                .collect();
            err2 += raw
                .iter()
                .zip(f)
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum::<f64>();
            agree += usize::from(e.finish(raw).label == *label);
        }
        Ok(ResolutionTrial {
            leaf_range: range,
            score_rms_error: (err2 / (n * outputs as f64)).sqrt(),
            agreement: agree as f64 / n,
        })
    };
    let finest = trial(MAX_LEAF_RANGE)?;
    let mut trials = vec![finest.clone()];
    for bits in 1..16 {
        let t = trial((1u64 << bits) - 1)?;
        let accepted = t.agreement >= finest.agreement
            && t.score_rms_error <= SCORE_ERROR_TOLERANCE * score_sd;
        trials.push(t);
        if accepted {
            break;
        }
    }
    let leaf_range = trials
        .last()
        .filter(|t| {
            t.agreement >= finest.agreement && t.score_rms_error <= SCORE_ERROR_TOLERANCE * score_sd
        })
        .map_or(MAX_LEAF_RANGE, |t| t.leaf_range);
    Ok(ResolutionChoice {
        leaf_range,
        score_sd,
        trials,
    })
}

/// Quantizes `e` at the leaf resolution `rows` call for ([`choose_leaf_range`]), grouping the
/// trees into as many score slots as that resolution needs ([`quantize_trees_at`]).
pub fn quantize_trees_on(
    e: &TreeEnsemble,
    rows: &[Vec<f32>],
) -> Result<(CompiledForest, ResolutionChoice), TrainError> {
    let choice = choose_leaf_range(e, rows)?;
    Ok((quantize_trees_at(e, choice.leaf_range)?, choice))
}

/// Distinct comparisons, in a stable order: (feature, threshold bits, inclusive).
type ThresholdKey = (usize, u32, bool);

fn threshold_key(feature: usize, t: f32, cmp: Cmp) -> ThresholdKey {
    (feature, t.to_bits(), matches!(cmp, Cmp::Lt | Cmp::Gte))
}

/// The ensemble's trees over thermometer bits, leaves valued by `leaf`.
fn structure(e: &TreeEnsemble, leaf: impl Fn(&[(usize, f32)]) -> Vec<i64>) -> TreeModel {
    let mut index: BTreeMap<ThresholdKey, u32> = BTreeMap::new();
    for t in &e.trees {
        for n in &t.nodes {
            if let Node::Branch {
                feature,
                threshold,
                cmp,
                ..
            } = n
            {
                index
                    .entry(threshold_key(*feature, *threshold, *cmp))
                    .or_insert(0);
            }
        }
    }
    let thresholds: Vec<Threshold> = index
        .keys()
        .map(|&(feature, bits, inclusive)| Threshold {
            feature: feature as u32,
            value: f32::from_bits(bits),
            inclusive,
        })
        .collect();
    for (i, v) in index.values_mut().enumerate() {
        *v = i as u32;
    }
    let trees = e
        .trees
        .iter()
        .map(|t| QTree {
            nodes: t
                .nodes
                .iter()
                .map(|n| match n {
                    Node::Branch {
                        feature,
                        threshold,
                        cmp,
                        yes,
                        no,
                        ..
                    } => QNode::Branch {
                        bit: index[&threshold_key(*feature, *threshold, *cmp)],
                        // LEQ/LT go "yes" when x is below: when the bit (x > t, x >= t) is 0.
                        yes_when: matches!(cmp, Cmp::Gt | Cmp::Gte),
                        yes: *yes as u32,
                        no: *no as u32,
                    },
                    Node::Leaf { weights } => QNode::Leaf {
                        values: leaf(weights),
                    },
                })
                .collect(),
        })
        .collect();
    TreeModel {
        n_features: e.n_features as u32,
        n_outputs: e.n_scores as u32,
        thresholds,
        trees,
        leaf_bits: 0,
        scale: 1.0,
    }
}

/// Quantizes leaf weights to integers at one common scale, so that within every tree and
/// output the leaves spread over at most `range` integers.
pub fn quantize_with_range(e: &TreeEnsemble, range: u64) -> Result<TreeModel, TrainError> {
    if range == 0 {
        return Err(TrainError::Unsupported("leaf range of 0".into()));
    }
    let per_tree = if e.average {
        1.0 / e.trees.len() as f64
    } else {
        1.0
    };
    let float_leaf = |weights: &[(usize, f32)]| {
        let mut v = vec![0f64; e.n_scores];
        for (slot, w) in weights {
            v[*slot] += *w as f64 * per_tree;
        }
        v
    };
    // The widest spread of one tree's leaves for one output.
    let mut spread = 0f64;
    for t in &e.trees {
        let leaves: Vec<Vec<f64>> = t
            .nodes
            .iter()
            .filter_map(|n| match n {
                Node::Leaf { weights } => Some(float_leaf(weights)),
                _ => None,
            })
            .collect();
        for o in 0..e.n_scores {
            let hi = leaves.iter().map(|l| l[o]).fold(f64::MIN, f64::max);
            let lo = leaves.iter().map(|l| l[o]).fold(f64::MAX, f64::min);
            spread = spread.max(hi - lo);
        }
    }
    let mut scale = if spread > 0.0 {
        spread / range as f64
    } else {
        1.0
    };
    for _ in 0..64 {
        let model = structure(e, |w| {
            float_leaf(w)
                .iter()
                .map(|v| (v / scale).round() as i64)
                .collect()
        });
        let fits = model.trees.iter().all(|t| {
            (0..e.n_scores).all(|o| {
                let vals = t.nodes.iter().filter_map(|n| match n {
                    QNode::Leaf { values } => Some(values[o]),
                    _ => None,
                });
                let (lo, hi) = vals.fold((i64::MAX, i64::MIN), |(a, b), v| (a.min(v), b.max(v)));
                (hi - lo) as u64 <= range
            })
        });
        if fits {
            let largest = model
                .trees
                .iter()
                .flat_map(|t| &t.nodes)
                .filter_map(|n| match n {
                    QNode::Leaf { values } => values.iter().map(|v| v.unsigned_abs()).max(),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            let model = TreeModel {
                leaf_bits: (65 - largest.leading_zeros()).max(2) as u8,
                scale,
                ..model
            };
            model.validate().map_err(|err| {
                TrainError::Unsupported(format!("quantized ensemble is invalid: {err}"))
            })?;
            return Ok(model);
        }
        // Rounding pushed a spread one past the range: widen the step a little.
        scale *= 1.0 + 1.0 / range as f64;
    }
    Err(TrainError::Unsupported(
        "leaf values could not be fitted into the score slots".into(),
    ))
}

/// The quantized model's prediction for one record, through the integer reference.
pub fn predict_quantized(e: &TreeEnsemble, q: &TreeModel, x: &[f32]) -> FloatPrediction {
    let sums = q.eval_plain(&q.bits(x));
    e.finish(sums.iter().map(|&s| (s as f64 * q.scale) as f32).collect())
}

/// Float against quantized on labelled records.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeReport {
    pub records: usize,
    pub float_accuracy: f64,
    pub quantized_accuracy: f64,
    pub agreement: f64,
    pub trees: usize,
    pub max_depth: usize,
    pub thermometer_bits: usize,
    pub pbs_per_record: usize,
    /// Width of a score slot and the integer spread of a tree's leaves it allows.
    pub slot_bits: u8,
    pub leaf_range: u64,
    /// Tree groups (each summed into its own score slots) and score slots per record.
    pub groups: usize,
    pub score_slots: u32,
}

/// Compares the float and quantized ensembles on `(record, label)` pairs.
pub fn tree_report(
    e: &TreeEnsemble,
    c: &CompiledForest,
    rows: &[(Vec<f32>, String)],
) -> TreeReport {
    let q = &c.model;
    let float = fhe_batch_onnx::FloatModel::Trees(e.clone());
    let (mut fc, mut qc, mut agree) = (0usize, 0usize, 0usize);
    for (x, y) in rows {
        let f = float.predict(x).label;
        let qp = predict_quantized(e, q, x).label;
        fc += usize::from(f.as_deref() == Some(y.as_str()));
        qc += usize::from(qp.as_deref() == Some(y.as_str()));
        agree += usize::from(f == qp);
    }
    let n = rows.len().max(1) as f64;
    TreeReport {
        records: rows.len(),
        float_accuracy: fc as f64 / n,
        quantized_accuracy: qc as f64 / n,
        agreement: agree as f64 / n,
        trees: q.trees.len(),
        max_depth: q.max_depth(),
        thermometer_bits: q.thresholds.len(),
        pbs_per_record: c.plan.pbs_per_record(),
        slot_bits: c.plan.slot_bits,
        leaf_range: c.layout.leaf_range,
        groups: c.layout.groups,
        score_slots: c.plan.score_slots,
    }
}

/// The data set's records with their labels written as the ensemble's class labels (matched as
/// [`crate::onnx::from_onnx`] matches them).
pub fn labelled_rows(
    e: &TreeEnsemble,
    ds: &crate::data::Dataset,
) -> Result<Vec<(Vec<f32>, String)>, TrainError> {
    let fhe_batch_onnx::OnnxTask::Classifier { labels } = &e.task else {
        return Err(TrainError::Unsupported(
            "accuracy reports need a classifier".into(),
        ));
    };
    let crate::data::Target::Classes { names, idx } = &ds.y else {
        return Err(TrainError::Unsupported(
            "the model is a classifier but the label column is numeric".into(),
        ));
    };
    if ds.n_features() != e.n_features {
        return Err(TrainError::Unsupported(format!(
            "the model takes {} features; the data set has {} feature columns",
            e.n_features,
            ds.n_features()
        )));
    }
    let model_class = crate::onnx::model_class_of(labels, names)?;
    Ok((0..ds.len())
        .map(|i| {
            let x = ds.row(i).iter().map(|&v| v as f32).collect();
            (x, labels[model_class[idx[i]]].clone())
        })
        .collect())
}

/// Builds the model package of a compiled ensemble: the server part carries the bootstrap plan
/// (the leaf values live only in its lookup tables), the client part the thresholds, the slot
/// readout and the post-processing. `feature_names` name the ensemble's inputs in order; with
/// `class_names` (the data set's, sorted) predictions are written with those names instead of the
/// model's own labels (matched as the linear import matches them).
pub fn package_forest(
    e: &TreeEnsemble,
    c: &CompiledForest,
    feature_names: Vec<String>,
    target: String,
    class_names: Option<&[String]>,
    report: Option<&TreeReport>,
    evaluated_on: &str,
) -> Result<ModelPackage, TrainError> {
    if feature_names.len() != e.n_features {
        return Err(TrainError::Unsupported(format!(
            "the model takes {} features; {} names were given",
            e.n_features,
            feature_names.len()
        )));
    }
    let params = TREE_PARAMS;
    let plan = c.plan.clone();
    let mut readout = e.readout();
    if let Some(names) = class_names.filter(|_| !readout.labels.is_empty()) {
        let model_class = crate::onnx::model_class_of(&readout.labels, names)?;
        for (c, &k) in model_class.iter().enumerate() {
            readout.labels[k] = names[c].clone();
        }
    }
    let server = ServerModel::new(params, ServerBody::TreeEnsemble(plan.clone()));
    let client = ClientModel::new(
        params,
        feature_names,
        target,
        ClientBody::TreeEnsemble(ForestClient {
            thresholds: c.model.thresholds.clone(),
            score_slots: plan.score_slots,
            slot_bits: plan.slot_bits,
            slots: c.readout.clone(),
            scale: c.model.scale,
            readout,
        }),
    );
    let report = report.map_or_else(CompileReport::default, |r| CompileReport {
        evaluated_on: evaluated_on.to_string(),
        records: r.records,
        float_score: r.float_accuracy,
        quantized_score: r.quantized_accuracy,
        agreement: r.agreement,
    });
    Ok(ModelPackage::build(server, client, report)?)
}
