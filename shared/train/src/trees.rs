//! Quantizing an imported tree ensemble: thresholds become the client's thermometer bits and
//! leaf weights become integers at one common scale; the compile report compares the float
//! model with the quantized one on labelled records.

use crate::model::TrainError;
use fhe_batch_core::tree::{QNode, QTree, Threshold, TreeModel};
use fhe_batch_onnx::{Cmp, Node, Prediction, TreeEnsemble};
use std::collections::BTreeMap;

/// Quantizes `e` with leaf values of `leaf_bits` bits (sign included).
pub fn quantize_trees(e: &TreeEnsemble, leaf_bits: u8) -> Result<TreeModel, TrainError> {
    if !(2..=16).contains(&leaf_bits) {
        return Err(TrainError::Bits(leaf_bits));
    }
    // Distinct comparisons, in a stable order: (feature, threshold bits, inclusive).
    let mut index: BTreeMap<(usize, u32, bool), u32> = BTreeMap::new();
    let key = |feature: usize, t: f32, cmp: Cmp| {
        let inclusive = matches!(cmp, Cmp::Lt | Cmp::Gte);
        (feature, t.to_bits(), inclusive)
    };
    for t in &e.trees {
        for n in &t.nodes {
            if let Node::Branch {
                feature,
                threshold,
                cmp,
                ..
            } = n
            {
                index.entry(key(*feature, *threshold, *cmp)).or_insert(0);
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
    let per_tree = if e.average {
        1.0 / e.trees.len() as f64
    } else {
        1.0
    };
    let largest = e
        .trees
        .iter()
        .flat_map(|t| &t.nodes)
        .filter_map(|n| match n {
            Node::Leaf { weights } => Some(weights),
            _ => None,
        })
        .flatten()
        .fold(0.0f64, |m, (_, w)| m.max((*w as f64 * per_tree).abs()));
    let top = ((1i64 << (leaf_bits - 1)) - 1) as f64;
    let scale = if largest > 0.0 { largest / top } else { 1.0 };
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
                        bit: index[&key(*feature, *threshold, *cmp)],
                        // LEQ/LT go "yes" when x is below: when the bit (x > t, x >= t) is 0.
                        yes_when: matches!(cmp, Cmp::Gt | Cmp::Gte),
                        yes: *yes as u32,
                        no: *no as u32,
                    },
                    Node::Leaf { weights } => {
                        let mut values = vec![0i64; e.n_slots];
                        for (slot, w) in weights {
                            values[*slot] += (*w as f64 * per_tree / scale).round() as i64;
                        }
                        QNode::Leaf { values }
                    }
                })
                .collect(),
        })
        .collect();
    let model = TreeModel {
        n_features: e.n_features as u32,
        n_outputs: e.n_slots as u32,
        thresholds,
        trees,
        leaf_bits,
        scale,
    };
    model
        .validate()
        .map_err(|e| TrainError::Unsupported(format!("quantized ensemble is invalid: {e}")))?;
    Ok(model)
}

/// The quantized model's prediction for one record, through the integer reference.
pub fn predict_quantized(e: &TreeEnsemble, q: &TreeModel, x: &[f32]) -> Prediction {
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
}

/// Compares the float and quantized ensembles on `(record, label)` pairs.
pub fn tree_report(e: &TreeEnsemble, q: &TreeModel, rows: &[(Vec<f32>, String)]) -> TreeReport {
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
        pbs_per_record: q.pbs_per_record(),
    }
}

/// The data set's records with their labels written as the ensemble's class labels (matched as
/// [`crate::onnx::from_onnx`] matches them).
pub fn labelled_rows(
    e: &TreeEnsemble,
    ds: &crate::data::Dataset,
) -> Result<Vec<(Vec<f32>, String)>, TrainError> {
    let fhe_batch_onnx::Task::Classifier { labels } = &e.task else {
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
