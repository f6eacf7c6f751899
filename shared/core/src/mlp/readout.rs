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
    /// Float score `i` = `integer score * score_scale + score_offset + score_offsets[i]`.
    pub score_scale: f64,
    pub score_offset: f64,
    /// Each score's own offset (the centre of its proven range, which the server's torus
    /// value is centred on), or empty where every score shares `score_offset` alone
    /// (packages compiled before per-score centring).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub score_offsets: Vec<f64>,
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
            .enumerate()
            .map(|(i, &v)| {
                let own = self.score_offsets.get(i).copied().unwrap_or(0.0);
                (v as f64 * self.score_scale + self.score_offset + own) as f32
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client(score_offsets: Vec<f64>) -> MlpClient {
        MlpClient {
            quantizers: vec![Quantizer {
                min: 0.0,
                scale: 1.0,
            }],
            input_bits: 8,
            column_bits: 20,
            output_bits: 16,
            n_scores: 3,
            score_scale: 0.5,
            score_offset: 1.0,
            score_offsets,
            labels: vec!["a".into(), "b".into(), "c".into()],
            post: PostTransform::None,
        }
    }

    /// Each score's own offset is added back, and it can change the argmax; a client part
    /// written before per-score offsets (no such field) still loads and reads as before.
    #[test]
    fn per_score_offsets_are_added_back_and_old_parts_still_load() {
        let c = client(vec![0.0, 10.0, -3.0]);
        assert_eq!(c.float_scores(&[4, 2, 6]), vec![3.0, 12.0, 1.0]);
        assert_eq!(c.finish(c.float_scores(&[4, 2, 6])).0, Some(1));
        let old = client(Vec::new());
        assert_eq!(old.float_scores(&[4, 2, 6]), vec![3.0, 2.0, 4.0]);
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("score_offsets"));
        let back: MlpClient = serde_json::from_str(&json).unwrap();
        assert_eq!(back, old);
        let with: MlpClient = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(with, c);
    }
}
