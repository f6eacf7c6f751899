//! Training (linfa) and compilation to the quantized integer model.

use crate::data::{Dataset, Target, column_stats};
use fhe_batch_core::model::linear::prove_bounds;
use fhe_batch_core::model::{
    ClientBody, ClientFamily, ClientModel, CompileReport, LinearClient, LinearServer, LinearTask,
    ModelError, ModelPackage, Quantizer, ServerBody, ServerModel,
};
use fhe_batch_core::params::ParamSet;
use linfa::prelude::*;
use ndarray::{Array1, Array2};

/// Why training or compilation failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training failed: {0}")]
    Fit(String),
    #[error("n_bits must be between 2 and 16, got {0}")]
    Bits(u8),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the data set is empty")]
    Empty,
    #[error("cannot import this model: {0}")]
    Unsupported(String),
}

/// A trained floating-point linear model over raw (unscaled) features.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearFloatModel {
    pub task: LinearTask,
    pub feature_names: Vec<String>,
    pub target_name: String,
    pub classes: Vec<String>,
    /// Row-major `outputs x features`.
    pub weights: Vec<f64>,
    pub bias: Vec<f64>,
}

/// Training options.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// L2 regularisation strength of logistic regression.
    pub alpha: f64,
    pub max_iterations: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            alpha: 0.01,
            max_iterations: 200,
        }
    }
}

impl LinearFloatModel {
    pub fn n_outputs(&self) -> usize {
        self.bias.len()
    }

    pub fn logits(&self, x: &[f64]) -> Vec<f64> {
        let f = self.feature_names.len();
        (0..self.n_outputs())
            .map(|c| {
                self.weights[c * f..(c + 1) * f]
                    .iter()
                    .zip(x)
                    .fold(self.bias[c], |a, (w, v)| a + w * v)
            })
            .collect()
    }

    /// Predicted class index (classifiers) for one record.
    pub fn predict_class(&self, x: &[f64]) -> usize {
        let z = self.logits(x);
        match self.task {
            LinearTask::BinaryLogistic => usize::from(z[0] >= 0.0),
            _ => z
                .iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > z[b] { i } else { b }),
        }
    }
}

/// Trains a logistic regression (binary or multinomial, by the number of classes) or a linear
/// regression on `ds`. Features are standardised for the optimiser and the scaling is folded
/// back into the weights, so the model applies to raw features.
pub fn train(ds: &Dataset, opts: &TrainOptions) -> Result<LinearFloatModel, TrainError> {
    if ds.is_empty() {
        return Err(TrainError::Empty);
    }
    let f = ds.n_features();
    let n = ds.len();
    let stats = column_stats(ds);
    let sd = |j: usize| if stats[j].1 > 0.0 { stats[j].1 } else { 1.0 };
    let z = Array2::from_shape_fn((n, f), |(i, j)| (ds.x[i * f + j] - stats[j].0) / sd(j));
    // (outputs x features) weights and biases on standardised features.
    let (task, classes, w_std, b_std): (LinearTask, Vec<String>, Vec<Vec<f64>>, Vec<f64>) =
        match &ds.y {
            Target::Classes { names, idx } if names.len() == 2 => {
                let y = Array1::from_iter(idx.iter().copied());
                let fit = linfa_logistic::LogisticRegression::default()
                    .alpha(opts.alpha)
                    .max_iterations(opts.max_iterations)
                    .fit(&DatasetBase::new(z, y))
                    .map_err(|e| TrainError::Fit(e.to_string()))?;
                let (mut w, mut b) = (fit.params().to_vec(), fit.intercept());
                // linfa's positive class is whichever label it chose; orient towards class 1.
                if fit.labels().pos.class != 1 {
                    w.iter_mut().for_each(|v| *v = -*v);
                    b = -b;
                }
                (LinearTask::BinaryLogistic, names.clone(), vec![w], vec![b])
            }
            Target::Classes { names, idx } => {
                let y = Array1::from_iter(idx.iter().copied());
                let fit = linfa_logistic::MultiLogisticRegression::default()
                    .alpha(opts.alpha)
                    .max_iterations(opts.max_iterations)
                    .fit(&DatasetBase::new(z, y))
                    .map_err(|e| TrainError::Fit(e.to_string()))?;
                let params = fit.params(); // features x classes, columns in fit.classes() order
                let mut w = vec![vec![0.0; f]; names.len()];
                let mut b = vec![0.0; names.len()];
                for (col, &class) in fit.classes().iter().enumerate() {
                    for j in 0..f {
                        w[class][j] = params[[j, col]];
                    }
                    b[class] = fit.intercept()[col];
                }
                (LinearTask::MultinomialLogistic, names.clone(), w, b)
            }
            Target::Values(v) => {
                let y = Array1::from_vec(v.clone());
                let fit = linfa_linear::LinearRegression::new()
                    .fit(&DatasetBase::new(z, y))
                    .map_err(|e| TrainError::Fit(e.to_string()))?;
                (
                    LinearTask::Regression,
                    Vec::new(),
                    vec![fit.params().to_vec()],
                    vec![fit.intercept()],
                )
            }
        };
    // Unfold the standardisation: w_raw = w / sd, b_raw = b - sum(w * mean / sd).
    let mut weights = Vec::with_capacity(w_std.len() * f);
    let mut bias = Vec::with_capacity(w_std.len());
    for (row, b) in w_std.iter().zip(&b_std) {
        let mut braw = *b;
        for j in 0..f {
            weights.push(row[j] / sd(j));
            braw -= row[j] * stats[j].0 / sd(j);
        }
        bias.push(braw);
    }
    Ok(LinearFloatModel {
        task,
        feature_names: ds.feature_names.clone(),
        target_name: ds.target_name.clone(),
        classes,
        weights,
        bias,
    })
}

/// Quantizes a float model into the integer IR and packages it.
///
/// Inputs: per-feature affine quantization to `n_bits`, calibrated on `calibration`'s range.
/// Weights: one scale for all outputs (so argmax and sign are preserved), integers in
/// `[-(2^(n_bits-1) - 1), 2^(n_bits-1) - 1]`. The bias absorbs the quantizers' offsets. The
/// noise and range proof runs before anything is written; a model that could overflow is
/// refused. The report is computed on `evaluation`.
pub fn compile(
    model: &LinearFloatModel,
    calibration: &Dataset,
    evaluation: &Dataset,
    n_bits: u8,
    params: ParamSet,
) -> Result<ModelPackage, TrainError> {
    if !(2..=16).contains(&n_bits) {
        return Err(TrainError::Bits(n_bits));
    }
    if calibration.is_empty() {
        return Err(TrainError::Empty);
    }
    let f = model.feature_names.len();
    let top = ((1u64 << n_bits) - 1) as f64;
    let quantizers: Vec<Quantizer> = (0..f)
        .map(|j| {
            let (lo, hi) = (0..calibration.len())
                .map(|i| calibration.x[i * f + j])
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                });
            let scale = if hi > lo { (hi - lo) / top } else { 1.0 };
            Quantizer { min: lo, scale }
        })
        .collect();
    let outputs = model.n_outputs();
    let effective: Vec<f64> = (0..outputs * f)
        .map(|k| model.weights[k] * quantizers[k % f].scale)
        .collect();
    let offsets: Vec<f64> = (0..outputs)
        .map(|c| {
            model.bias[c]
                + (0..f)
                    .map(|j| model.weights[c * f + j] * quantizers[j].min)
                    .sum::<f64>()
        })
        .collect();
    let wmax = ((1i64 << (n_bits - 1)) - 1) as f64;
    let largest = effective.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let scale = if largest > 0.0 { largest / wmax } else { 1.0 };
    let weights: Vec<i64> = effective
        .iter()
        .map(|v| (v / scale).round() as i64)
        .collect();
    let bias: Vec<i64> = offsets.iter().map(|v| (v / scale).round() as i64).collect();
    let bounds = prove_bounds(params, f, n_bits, &weights, &bias)?;
    let server = ServerModel::new(
        params,
        ServerBody::Linear(LinearServer {
            n_features: f as u32,
            n_outputs: outputs as u32,
            input_bits: n_bits,
            output_bits: bounds.output_bits,
            weights,
            bias,
        }),
    );
    let linear = LinearClient {
        task: model.task,
        quantizers,
        input_bits: n_bits,
        output_bits: bounds.output_bits,
        n_outputs: outputs as u32,
        classes: model.classes.clone(),
        output_scale: scale,
    };
    let report = evaluate(model, &server, &linear, evaluation);
    let client = ClientModel::new(
        params,
        model.feature_names.clone(),
        model.target_name.clone(),
        ClientBody::Linear(linear),
    );
    Ok(ModelPackage::build(server, client, report)?)
}
/// Float score, quantized score and their agreement on a data set.
pub fn evaluate(
    model: &LinearFloatModel,
    server: &ServerModel,
    client: &LinearClient,
    ds: &Dataset,
) -> CompileReport {
    let n = ds.len();
    let mut report = CompileReport {
        evaluated_on: String::new(),
        records: n,
        ..CompileReport::default()
    };
    if n == 0 {
        return report;
    }
    match &ds.y {
        Target::Classes { idx, .. } => {
            let (mut fc, mut qc, mut agree) = (0usize, 0usize, 0usize);
            for (i, &truth) in idx.iter().enumerate() {
                let x = ds.row(i);
                let fp = model.predict_class(x);
                let logits = server.eval_plain(&client.quantize(x));
                let qp = client.predict(&logits).class.unwrap_or(usize::MAX);
                fc += usize::from(fp == truth);
                qc += usize::from(qp == truth);
                agree += usize::from(fp == qp);
            }
            report.float_score = fc as f64 / n as f64;
            report.quantized_score = qc as f64 / n as f64;
            report.agreement = agree as f64 / n as f64;
        }
        Target::Values(v) => {
            let mean = v.iter().sum::<f64>() / n as f64;
            let range = v.iter().fold(f64::NEG_INFINITY, |m, x| m.max(*x))
                - v.iter().fold(f64::INFINITY, |m, x| m.min(*x));
            let ss_tot: f64 = v.iter().map(|y| (y - mean).powi(2)).sum();
            let (mut ss_f, mut ss_q, mut agree) = (0.0, 0.0, 0usize);
            for (i, &truth) in v.iter().enumerate() {
                let x = ds.row(i);
                let fp = model.logits(x)[0];
                let qp = client
                    .predict(&server.eval_plain(&client.quantize(x)))
                    .scores[0];
                ss_f += (truth - fp).powi(2);
                ss_q += (truth - qp).powi(2);
                agree += usize::from((fp - qp).abs() <= 0.01 * range.max(f64::MIN_POSITIVE));
            }
            report.float_score = 1.0 - ss_f / ss_tot.max(f64::MIN_POSITIVE);
            report.quantized_score = 1.0 - ss_q / ss_tot.max(f64::MIN_POSITIVE);
            report.agreement = agree as f64 / n as f64;
        }
    }
    report
}
