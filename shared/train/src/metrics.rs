//! Error figures of regressors, shared by every family's compile report: mean absolute error,
//! root mean square error and the coefficient of determination R^2, of the float model and of
//! the quantized one (and, for networks, of the encrypted predictions with simulated noise).

use crate::data::{Dataset, Target};

/// One regressor's predictions against the target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorFigures {
    /// Mean absolute error, in the target's unit.
    pub mae: f64,
    /// Root mean square error, in the target's unit.
    pub rmse: f64,
    /// `1 - SS_res / SS_tot` (1 is perfect, 0 is predicting the mean).
    pub r2: f64,
}

impl ErrorFigures {
    /// Figures of `predicted` against `truth` (same length; empty gives zeros).
    pub fn of(predicted: &[f64], truth: &[f64]) -> Self {
        assert_eq!(predicted.len(), truth.len(), "one prediction per record");
        let n = truth.len();
        if n == 0 {
            return ErrorFigures {
                mae: 0.0,
                rmse: 0.0,
                r2: 0.0,
            };
        }
        let mean = truth.iter().sum::<f64>() / n as f64;
        let (mut ae, mut se, mut ss) = (0.0, 0.0, 0.0);
        for (p, t) in predicted.iter().zip(truth) {
            ae += (p - t).abs();
            se += (p - t).powi(2);
            ss += (t - mean).powi(2);
        }
        ErrorFigures {
            mae: ae / n as f64,
            rmse: (se / n as f64).sqrt(),
            r2: 1.0 - se / ss.max(1e-12),
        }
    }
}

/// A regressor's error figures on the evaluation records: the float model's, the quantized
/// (integer reference) model's, which decryption reproduces exactly for linear models and tree
/// ensembles, and for networks the encrypted predictions' with the proven noise simulated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegressionErrors {
    pub records: usize,
    pub float: ErrorFigures,
    pub quantized: ErrorFigures,
    pub encrypted_simulated: Option<ErrorFigures>,
    /// Share of records whose quantized prediction lies within 1% of the target's range of
    /// the float one ([`regression_agreement`]).
    pub agreement: f64,
}

/// Share of records whose quantized prediction lies within 1% of the target's range of the
/// float one (the regression "agreement" of [`fhe_batch_core::model::CompileReport`]).
pub fn regression_agreement(float: &[f64], quantized: &[f64], truth: &[f64]) -> f64 {
    let lo = truth.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = truth.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tol = 0.01 * (hi - lo).max(1e-12);
    let agree = float
        .iter()
        .zip(quantized)
        .filter(|(f, q)| (*f - *q).abs() <= tol)
        .count();
    agree as f64 / float.len().max(1) as f64
}

/// The error figures of a single-target regressor on `eval`: `float` predicts a record with
/// the float model, `quantized` with the integer reference (what decryption gives). `None` when
/// `eval`'s label column holds classes.
pub fn regression_errors(
    eval: &Dataset,
    float: &dyn Fn(&[f64]) -> f64,
    quantized: &dyn Fn(&[f64]) -> f64,
) -> Option<RegressionErrors> {
    let Target::Values(truth) = &eval.y else {
        return None;
    };
    let f: Vec<f64> = (0..eval.len()).map(|i| float(eval.row(i))).collect();
    let q: Vec<f64> = (0..eval.len()).map(|i| quantized(eval.row(i))).collect();
    Some(RegressionErrors {
        records: eval.len(),
        float: ErrorFigures::of(&f, truth),
        quantized: ErrorFigures::of(&q, truth),
        encrypted_simulated: None,
        agreement: regression_agreement(&f, &q, truth),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_of_known_predictions() {
        let truth = [1.0, 2.0, 3.0, 4.0];
        let e = ErrorFigures::of(&truth, &truth);
        assert_eq!((e.mae, e.rmse, e.r2), (0.0, 0.0, 1.0));
        let e = ErrorFigures::of(&[2.0, 2.0, 2.0, 6.0], &truth);
        assert!((e.mae - 1.0).abs() < 1e-12);
        assert!((e.rmse - (6.0f64 / 4.0).sqrt()).abs() < 1e-12);
        assert!((e.r2 - (1.0 - 6.0 / 5.0)).abs() < 1e-12);
        let mean = ErrorFigures::of(&[2.5; 4], &truth);
        assert!(mean.r2.abs() < 1e-12);
        assert_eq!(regression_agreement(&[1.0, 2.0], &[1.01, 2.5], &truth), 0.5);
    }
}
