//! The client's side of a tree ensemble: thermometer bits from a record, slot sums back to
//! integer scores ([`SlotReadout`]), and scores to a prediction with ONNX Runtime's rules
//! ([`Readout`]).

use super::ir::Threshold;
use serde::{Deserialize, Serialize};

/// How the client turns decrypted slot sums back into per-output integer scores:
/// `score[o] = offset[o] + sum(weight * slot)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotReadout {
    pub slots: Vec<Vec<(u32, i64)>>,
    pub offsets: Vec<i64>,
}

impl SlotReadout {
    pub fn scores(&self, slot_sums: &[u64]) -> Vec<i64> {
        self.slots
            .iter()
            .zip(&self.offsets)
            .map(|(terms, &off)| {
                terms
                    .iter()
                    .fold(off, |acc, &(s, w)| acc + w * slot_sums[s as usize] as i64)
            })
            .collect()
    }
}

/// The transform applied to raw scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostTransform {
    None,
    Logistic,
    Softmax,
    /// `x - max - ln(sum(exp(x - max)))` (PyTorch's `LogSoftmax` ending): log-probabilities.
    LogSoftmax,
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Applies `post` in place (f32, as ONNX Runtime does).
pub fn transform(post: PostTransform, s: &mut [f32]) {
    match post {
        PostTransform::None => {}
        PostTransform::Logistic => s.iter_mut().for_each(|v| *v = sigmoid(*v)),
        PostTransform::Softmax => {
            let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = s
                .iter_mut()
                .map(|v| {
                    *v = (*v - m).exp();
                    *v
                })
                .sum();
            s.iter_mut().for_each(|v| *v /= sum);
        }
        PostTransform::LogSoftmax => {
            let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let log_sum = s.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
            s.iter_mut().for_each(|v| *v = *v - m - log_sum);
        }
    }
}

/// What the client needs to turn an ensemble's summed scores into a prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readout {
    /// Class labels in the model's order; empty for a regressor.
    pub labels: Vec<String>,
    pub base_values: Vec<f32>,
    pub post: PostTransform,
    /// Every leaf weight is >= 0 (decides ONNX Runtime's binary label rule).
    pub weights_positive: bool,
}

impl Readout {
    /// Raw per-slot sums (before base values) to `(label, scores)`: base values, the binary
    /// single-score rule, the post-transform.
    pub fn finish(&self, mut s: Vec<f32>) -> (Option<String>, Vec<f32>) {
        for (v, b) in s.iter_mut().zip(&self.base_values) {
            *v += b;
        }
        if self.labels.is_empty() {
            transform(self.post, &mut s);
            return (None, s);
        }
        if self.labels.len() == 2 && s.len() == 1 {
            // One score for the positive class (ONNX Runtime's binary case).
            let v = s[0];
            let positive = if self.weights_positive && self.post == PostTransform::None {
                v > 0.5
            } else {
                v > 0.0
            };
            let scores = match self.post {
                PostTransform::None if self.weights_positive => vec![1.0 - v, v],
                PostTransform::None => vec![-v, v],
                _ => vec![1.0 - sigmoid(v), sigmoid(v)],
            };
            return (Some(self.labels[positive as usize].clone()), scores);
        }
        let label = self.labels[crate::model::argmax(&s)].clone();
        transform(self.post, &mut s);
        (Some(label), s)
    }
}

/// The client's part of a compiled ensemble: the comparisons it makes, how it reads the slots
/// back, and the readout. It holds no leaf values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForestClient {
    pub thresholds: Vec<Threshold>,
    /// Score slots per record in a result, and the bits each decodes from
    /// (`2^(64 - slot_bits)`): the plan's.
    pub score_slots: u32,
    pub slot_bits: u8,
    pub slots: SlotReadout,
    /// A float score is `integer score * scale` (before base values).
    pub scale: f64,
    pub readout: Readout,
}

/// Encoding bits of a thermometer-bit column: tfhe's 2+2-bit shortint encoding with its padding
/// bit, a bit `b` is encrypted as `b * 2^59`.
pub const THERMOMETER_COLUMN_BITS: u8 = 5;

impl ForestClient {
    /// The client's encoding of one record: one 0/1 column per threshold.
    pub fn thermometer_bits(&self, x: &[f64]) -> Vec<u64> {
        let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        self.thresholds
            .iter()
            .map(|t| u64::from(t.bit(&x)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_is_the_log_of_softmax() {
        let mut p = [1.0f32, 2.0, 3.5];
        let mut l = p;
        transform(PostTransform::Softmax, &mut p);
        transform(PostTransform::LogSoftmax, &mut l);
        for (p, l) in p.iter().zip(&l) {
            assert!((p.ln() - l).abs() < 1e-6, "{p} {l}");
        }
        // Large logits do not overflow.
        let mut big = [1000.0f32, 999.0];
        transform(PostTransform::LogSoftmax, &mut big);
        assert!(
            big.iter().all(|v| v.is_finite()) && big[0] > big[1],
            "{big:?}"
        );
    }
}
