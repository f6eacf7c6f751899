//! The client's part of a network: per-feature quantization in, scores out.

use crate::model::Quantizer;
use crate::tree::{PostTransform, sigmoid, transform};
use serde::{Deserialize, Serialize};

/// What the data owner needs to encrypt records for a network and read its scores. It holds no
/// weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpClient {
    /// One quantizer per feature, in feature order.
    pub quantizers: Vec<Quantizer>,
    /// Quantized features lie in `0..2^input_bits`.
    pub input_bits: u8,
    /// A quantized feature `q` is encrypted as `q * 2^(64 - column_bits)`.
    pub column_bits: u8,
    /// Scores are decoded from their top `output_bits` bits, as signed integers.
    pub output_bits: u8,
    pub n_scores: u32,
    /// Float score = `integer score * score_scale + score_offset` (one offset for all scores,
    /// so it changes no argmax and no softmax).
    pub score_scale: f64,
    pub score_offset: f64,
    /// Class names in score order (a binary classifier with one score: `[negative,
    /// positive]`); empty for a regressor.
    pub labels: Vec<String>,
    /// Softmax (multiclass), Logistic (one binary score) or None.
    pub post: PostTransform,
}

impl MlpClient {
    /// One record's quantized features.
    pub fn quantize(&self, record: &[f64]) -> Vec<u64> {
        Quantizer::record(&self.quantizers, record, self.input_bits)
    }

    /// Integer scores to float scores (before the post-transform).
    pub fn float_scores(&self, scores: &[i64]) -> Vec<f32> {
        scores
            .iter()
            .map(|&v| (v as f64 * self.score_scale + self.score_offset) as f32)
            .collect()
    }

    /// Float scores to `(class, probabilities or values)`, with ONNX Runtime's rules: one
    /// binary score is the positive class's logit.
    pub fn finish(&self, mut z: Vec<f32>) -> (Option<usize>, Vec<f32>) {
        if self.labels.is_empty() {
            transform(self.post, &mut z);
            return (None, z);
        }
        if self.labels.len() == 2 && z.len() == 1 {
            let p = sigmoid(z[0]);
            return (Some(usize::from(z[0] > 0.0)), vec![1.0 - p, p]);
        }
        let class = crate::model::argmax(&z);
        transform(self.post, &mut z);
        (Some(class), z)
    }
}
