//! Models trained elsewhere: an imported ONNX linear model becomes the same [`LinearFloatModel`] that
//! training produces, so it is quantized, proven and packaged the same way. A scaler in front
//! of it ([`fhe_batch_onnx::Preprocess`]: skl2onnx's `StandardScaler`, `MinMaxScaler`) is folded
//! into the weights: `w . (a x + b) + c = (w a) . x + (c + w . b)`.

use crate::data::{Dataset, Target};
use crate::model::{LinearFloatModel, TrainError};
use fhe_batch_core::model::LinearTask;
use fhe_batch_onnx::{FloatModel as OnnxModel, Imported, Linear, OnnxTask, PostTransform};

/// Converts an imported model, naming features and classes from the calibration data set
/// (ONNX files carry one input tensor, not column names).
///
/// Class labels: string labels must be the data set's class names; integer labels `0..C` are
/// taken as the data set's `C` class names in sorted order (how scikit-learn's `LabelEncoder`
/// and the export script number them).
pub fn from_onnx(imported: &Imported, data: &Dataset) -> Result<LinearFloatModel, TrainError> {
    let unsupported = |why: String| TrainError::Unsupported(why);
    let folded;
    let linear: &Linear = match &imported.model {
        OnnxModel::Linear(l) => l,
        OnnxModel::Trees(t) => {
            return Err(unsupported(format!(
                "{} with {} trees is a tree ensemble, not a linear model: compile it with \
                 `fhe_batch_train::import::compile_imported` (what `fhe-batch import` calls), \
                 which compiles every family it reads",
                imported.op_type,
                t.trees.len()
            )));
        }
        OnnxModel::Mlp(m) if m.layers.len() == 1 => {
            folded = mlp_as_linear(m);
            &folded
        }
        OnnxModel::Mlp(m) => {
            return Err(unsupported(format!(
                "{} is a neural network ({} hidden layers), not a linear model: compile it with \
                 `fhe_batch_train::import::compile_imported` (what `fhe-batch import` calls)",
                imported.op_type,
                m.hidden().len()
            )));
        }
    };
    let f = data.n_features();
    if linear.n_features != f {
        return Err(unsupported(format!(
            "the model takes {} features; the data set has {f} feature columns",
            linear.n_features
        )));
    }
    // Weights on the raw features: the preprocessing `x' = a x + b` folded in (in f64).
    let affine: Vec<(f64, f64)> = (0..f)
        .map(|j| linear.pre.as_ref().map_or((1.0, 0.0), |p| p.affine(j)))
        .collect();
    let rows: Vec<Vec<f64>> = linear
        .coefficients
        .iter()
        .map(|r| {
            r.iter()
                .zip(&affine)
                .map(|(&w, (a, _))| w as f64 * a)
                .collect()
        })
        .collect();
    let intercepts: Vec<f64> = linear
        .coefficients
        .iter()
        .zip(&linear.intercepts)
        .map(|(r, &c)| {
            c as f64
                + r.iter()
                    .zip(&affine)
                    .map(|(&w, (_, b))| w as f64 * b)
                    .sum::<f64>()
        })
        .collect();
    let row = |r: usize| rows[r].iter().copied();
    let (kind, classes, weights, bias): (LinearTask, Vec<String>, Vec<f64>, Vec<f64>) =
        match (&linear.task, &data.y) {
            (OnnxTask::Regressor { targets }, Target::Values(_)) => {
                if *targets != 1 || linear.post != PostTransform::None {
                    return Err(unsupported(
                        "only single-target linear regression without a post-transform".into(),
                    ));
                }
                (
                    LinearTask::Regression,
                    Vec::new(),
                    row(0).collect(),
                    vec![intercepts[0]],
                )
            }
            (OnnxTask::Classifier { labels }, Target::Classes { names, .. }) => {
                let mut classes = vec![String::new(); labels.len()];
                for (c, &m) in model_class_of(labels, names)?.iter().enumerate() {
                    classes[m] = names[c].clone();
                }
                let rows = linear.coefficients.len();
                if classes.len() == 2 {
                    // One logit: class 1's score against class 0's.
                    let (w, b): (Vec<f64>, f64) = if rows == 1 {
                        (row(0).collect(), intercepts[0])
                    } else if linear.coefficients[0]
                        .iter()
                        .zip(&linear.coefficients[1])
                        .all(|(a, b)| *a == -*b)
                    {
                        (row(1).collect(), intercepts[1])
                    } else {
                        (
                            row(1).zip(row(0)).map(|(a, b)| a - b).collect(),
                            intercepts[1] - intercepts[0],
                        )
                    };
                    (LinearTask::BinaryLogistic, classes, w, vec![b])
                } else {
                    (
                        LinearTask::MultinomialLogistic,
                        classes,
                        (0..rows).flat_map(row).collect(),
                        intercepts.clone(),
                    )
                }
            }
            (OnnxTask::Classifier { .. }, Target::Values(_)) => {
                return Err(unsupported(
                    "the model is a classifier but the label column is numeric".into(),
                ));
            }
            (OnnxTask::Regressor { .. }, Target::Classes { .. }) => {
                return Err(unsupported(
                    "the model is a regressor but the label column holds classes".into(),
                ));
            }
        };
    Ok(LinearFloatModel {
        task: kind,
        feature_names: data.feature_names.clone(),
        target_name: data.target_name.clone(),
        classes,
        weights,
        bias,
    })
}

/// For each of the data set's classes (its sorted names), the index of the model's label for
/// it: string labels must be the data set's class names; integer labels `0..C` stand for the
/// data set's `C` names in sorted order.
pub(crate) fn model_class_of(
    labels: &[String],
    names: &[String],
) -> Result<Vec<usize>, TrainError> {
    let mismatch = || {
        TrainError::Unsupported(format!(
            "the model's classes {labels:?} do not match the data set's {names:?}"
        ))
    };
    if labels.len() != names.len() {
        return Err(mismatch());
    }
    let numbered = labels
        .iter()
        .enumerate()
        .all(|(i, l)| l.parse::<usize>() == Ok(i));
    if numbered {
        return Ok((0..names.len()).collect());
    }
    names
        .iter()
        .map(|n| labels.iter().position(|l| l == n).ok_or_else(mismatch))
        .collect()
}

/// A network without hidden layers (dense layers with no activation between them, composed by
/// the importer) is a linear model: its scaler folded into the weights,
/// `w . ((x - o) * k) + b = (w * k) . x + (b - (w * k) . o)`.
pub fn mlp_as_linear(m: &fhe_batch_onnx::Mlp) -> Linear {
    let layer = &m.layers[0];
    let f = layer.inputs;
    let (offset, scale) = match &m.scaler {
        Some(s) => (s.offset.clone(), s.scale.clone()),
        None => (vec![0.0; f], vec![1.0; f]),
    };
    let coefficients: Vec<Vec<f32>> = layer
        .weights
        .chunks_exact(f)
        .map(|row| row.iter().zip(&scale).map(|(w, k)| w * k).collect())
        .collect();
    let intercepts = coefficients
        .iter()
        .zip(&layer.bias)
        .map(|(row, b)| b - row.iter().zip(&offset).map(|(w, o)| w * o).sum::<f32>())
        .collect();
    Linear {
        task: m.task.clone(),
        n_features: m.n_features,
        pre: None,
        coefficients,
        intercepts,
        post: m.post,
    }
}
