//! Linear models, the first model family: logistic regression (binary and multinomial) and
//! linear regression on quantized features.
//!
//! The server part ([`LinearServer`]) holds integer weights; the worker computes `W x + b` on
//! GLWE columns with no key and no bootstrap. [`prove_bounds`] proves from the weights alone
//! that every output decodes exactly. The client part ([`LinearClient`]) holds the quantizers,
//! class names and output scale, and no weights.

use super::{
    ClientFamily, MAX_FEATURES, MAX_OUTPUTS, ModelError, ModelFamily, Prediction, ServerFamily,
    argmax,
};
use crate::params::{Encryption, ParamSet};
use serde::{Deserialize, Serialize};

/// What a linear model computes from its integer outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinearTask {
    /// One logit; class 1 when it is positive.
    BinaryLogistic,
    /// One logit per class; the prediction is the argmax.
    MultinomialLogistic,
    /// One output: the predicted value is the output times the output scale.
    Regression,
}

impl LinearTask {
    pub fn is_classifier(self) -> bool {
        !matches!(self, LinearTask::Regression)
    }
}

/// Worst-case bounds proven for a model, recorded in its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// Decoded outputs are read from the top `output_bits` of each 64-bit coefficient.
    pub output_bits: u8,
    /// Smallest and largest integer output any valid input can produce.
    pub output_min: i64,
    pub output_max: i64,
    /// log2 of the worst-case absolute noise in a result coefficient.
    pub noise_log2: f64,
    /// Bits of headroom between that noise and half a decoding step.
    pub noise_margin_bits: f64,
}

/// Server part of a linear model: integer weights, nothing about features or classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearServer {
    pub n_features: u32,
    pub n_outputs: u32,
    /// Bits of each quantized input: inputs lie in `[0, 2^input_bits)`.
    pub input_bits: u8,
    /// Message-space width chosen by [`prove_bounds`]: inputs are encoded and outputs decoded
    /// at `2^(64 - output_bits)`.
    pub output_bits: u8,
    /// Row-major `n_outputs x n_features` integer weights.
    pub weights: Vec<i64>,
    /// One integer bias per output.
    pub bias: Vec<i64>,
}

impl LinearServer {
    /// The weights of output `output`.
    pub fn row(&self, output: usize) -> &[i64] {
        let f = self.n_features as usize;
        &self.weights[output * f..(output + 1) * f]
    }
}

impl ServerFamily for LinearServer {
    fn family(&self) -> ModelFamily {
        ModelFamily::Linear
    }

    fn input_columns(&self) -> u32 {
        self.n_features
    }

    fn result_values(&self) -> u32 {
        self.n_outputs
    }

    /// One GLWE per output: output `c` of record `i` is coefficient `i` of GLWE `c`.
    fn output_ciphertexts(&self, _records: u32, _n: usize) -> u32 {
        self.n_outputs
    }

    fn output_bits(&self) -> u8 {
        self.output_bits
    }

    fn pbs_per_record(&self) -> usize {
        0
    }

    fn prove(&self, params: ParamSet, encryption: Encryption) -> Result<Bounds, ModelError> {
        if self.bias.len() != self.n_outputs as usize {
            return Err(ModelError::Inconsistent(format!(
                "{} biases for {} outputs",
                self.bias.len(),
                self.n_outputs
            )));
        }
        let bounds = prove_bounds_for(
            params,
            encryption,
            self.n_features as usize,
            self.input_bits,
            &self.weights,
            &self.bias,
        )?;
        if bounds.output_bits != self.output_bits {
            return Err(ModelError::Inconsistent(format!(
                "declares {} output bits, the weights need {}",
                self.output_bits, bounds.output_bits
            )));
        }
        Ok(bounds)
    }

    fn eval_plain(&self, columns: &[u64]) -> Vec<i64> {
        (0..self.n_outputs as usize)
            .map(|c| {
                self.row(c)
                    .iter()
                    .zip(columns)
                    .fold(self.bias[c], |acc, (&w, &xi)| acc + w * xi as i64)
            })
            .collect()
    }
}

/// Proves, from the integer weights alone, that every output of the model decodes exactly for
/// every input in `[0, 2^input_bits)`, and picks the message-space width.
///
/// With TUniform noise every fresh sample satisfies `|e| <= 2^b` (b = the parameter set's bound),
/// so a result coefficient carries noise of at most `2^b * sum_j |w_cj|`: a deterministic bound, not
/// a probabilistic one. Decoding rounds to the nearest multiple of `delta = 2^(64 - p)`, which is
/// exact while the noise is below `delta / 2`, and the output itself must fit in p signed bits.
///
/// ```
/// use fhe_batch_core::model::linear::prove_bounds;
/// use fhe_batch_core::params::ParamSet;
/// // Two features of 8 bits, weights 127 and -127, bias 5.
/// let b = prove_bounds(ParamSet::Glwe2048TUniform17, 2, 8, &[127, -127], &[5]).unwrap();
/// assert_eq!((b.output_min, b.output_max), (-127 * 255 + 5, 127 * 255 + 5));
/// assert_eq!(b.output_bits, 16);
/// ```
pub fn prove_bounds(
    params: ParamSet,
    n_features: usize,
    input_bits: u8,
    weights: &[i64],
    bias: &[i64],
) -> Result<Bounds, ModelError> {
    prove_bounds_for(
        params,
        Encryption::SecretKey,
        n_features,
        input_bits,
        weights,
        bias,
    )
}

/// [`prove_bounds`] for inputs encrypted as `encryption` says: a public-key input carries up to
/// [`Encryption::noise_terms`] fresh samples' worth of noise, so the same weights may be proven
/// for secret-key batches and refused for public-key ones. The width `p` depends only on the
/// weights, so a model has one width for both.
pub fn prove_bounds_for(
    params: ParamSet,
    encryption: Encryption,
    n_features: usize,
    input_bits: u8,
    weights: &[i64],
    bias: &[i64],
) -> Result<Bounds, ModelError> {
    check_shape(n_features, bias.len(), input_bits, weights.len())?;
    let ranges = OutputRanges::of(n_features, input_bits, weights, bias);
    let noise_bound_log2 = params.noise_bound_log2();
    let terms = encryption.noise_terms(params) as i128;
    // Noise <= 2^b * terms * L1, and must stay strictly below delta/2 = 2^(63 - p).
    let noise_log2 = encryption.noise_bound_log2(params) + (ranges.worst_l1.max(1) as f64).log2();
    let max_bits = 62u32.saturating_sub(noise_bound_log2);
    if ranges.needed_bits > max_bits {
        let value = if signed_bits(ranges.max) >= signed_bits(ranges.min) {
            ranges.max
        } else {
            ranges.min
        };
        return Err(ModelError::Range {
            output: ranges.widest_output,
            value,
            needed_bits: ranges.needed_bits,
            max_bits,
        });
    }
    let p = ranges.needed_bits;
    let half_step: i128 = 1i128 << (63 - p);
    let noise: i128 = (ranges.worst_l1 * terms) << noise_bound_log2;
    if noise >= half_step {
        return Err(ModelError::Noise {
            output: ranges.noisiest_output,
            noise_log2,
            limit_log2: 63 - p,
        });
    }
    Ok(Bounds {
        output_bits: p as u8,
        output_min: ranges.min as i64,
        output_max: ranges.max as i64,
        noise_log2,
        noise_margin_bits: (63 - p) as f64 - noise_log2,
    })
}

/// The integer ranges and weight norms of a weight table over inputs in `[0, 2^input_bits)`.
struct OutputRanges {
    min: i128,
    max: i128,
    /// Signed bits the widest output needs, and which output that is.
    needed_bits: u32,
    widest_output: usize,
    /// The largest L1 norm of an output's weights, and which output has it.
    worst_l1: i128,
    noisiest_output: usize,
}

impl OutputRanges {
    fn of(n_features: usize, input_bits: u8, weights: &[i64], bias: &[i64]) -> Self {
        let x_max = (1i128 << input_bits) - 1;
        let mut r = OutputRanges {
            min: i128::MAX,
            max: i128::MIN,
            needed_bits: 1,
            widest_output: 0,
            worst_l1: 0,
            noisiest_output: 0,
        };
        for (c, row) in weights.chunks_exact(n_features).enumerate() {
            let (mut lo, mut hi) = (bias[c] as i128, bias[c] as i128);
            let mut l1: i128 = 0;
            for &w in row {
                let w = w as i128;
                if w > 0 {
                    hi += w * x_max;
                } else {
                    lo += w * x_max;
                }
                l1 += w.abs();
            }
            r.min = r.min.min(lo);
            r.max = r.max.max(hi);
            // Signed p-bit range is [-2^(p-1), 2^(p-1) - 1].
            let bits = signed_bits(lo).max(signed_bits(hi));
            if bits > r.needed_bits {
                r.needed_bits = bits;
                r.widest_output = c;
            }
            if l1 >= r.worst_l1 {
                r.worst_l1 = l1;
                r.noisiest_output = c;
            }
        }
        r
    }
}

fn check_shape(
    n_features: usize,
    n_outputs: usize,
    input_bits: u8,
    n_weights: usize,
) -> Result<(), ModelError> {
    if n_features == 0 || n_features > MAX_FEATURES {
        return Err(ModelError::Features { n_features });
    }
    if n_outputs == 0 || n_outputs > MAX_OUTPUTS {
        return Err(ModelError::Outputs { n_outputs });
    }
    if input_bits == 0 || input_bits > 16 {
        return Err(ModelError::InputBits { bits: input_bits });
    }
    if n_weights != n_features * n_outputs {
        return Err(ModelError::Shape {
            found: n_weights,
            expected: n_features * n_outputs,
        });
    }
    Ok(())
}

/// Bits needed to hold `v` as a two's-complement signed integer.
fn signed_bits(v: i128) -> u32 {
    if v >= 0 {
        129 - v.leading_zeros()
    } else {
        129 - (!v).leading_zeros()
    }
}

/// Per-feature affine quantizer: `q = clamp(round((x - min) / scale), 0, 2^bits - 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantizer {
    pub min: f64,
    pub scale: f64,
}

impl Quantizer {
    /// One record (feature order) through one quantizer per feature.
    pub fn record(quantizers: &[Quantizer], record: &[f64], bits: u8) -> Vec<u64> {
        record
            .iter()
            .zip(quantizers)
            .map(|(&x, q)| q.quantize(x, bits))
            .collect()
    }

    pub fn quantize(&self, x: f64, bits: u8) -> u64 {
        let top = ((1u64 << bits) - 1) as f64;
        let q = ((x - self.min) / self.scale).round();
        if q.is_nan() {
            0
        } else {
            q.clamp(0.0, top) as u64
        }
    }
}

/// Client part of a linear model: quantization, class names and output scale; no weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearClient {
    pub task: LinearTask,
    /// One quantizer per feature, in feature order.
    pub quantizers: Vec<Quantizer>,
    pub input_bits: u8,
    /// Inputs are encoded and outputs decoded at `2^(64 - output_bits)`.
    pub output_bits: u8,
    pub n_outputs: u32,
    /// Class names, in output order (binary: `[negative, positive]`); empty for regression.
    pub classes: Vec<String>,
    /// Float logit (or predicted value) = `output_scale * integer output`.
    pub output_scale: f64,
}

impl LinearClient {
    /// Quantizes one record given in feature order.
    pub fn quantize(&self, record: &[f64]) -> Vec<u64> {
        Quantizer::record(&self.quantizers, record, self.input_bits)
    }

    fn expected_classes(&self) -> usize {
        match self.task {
            LinearTask::BinaryLogistic => 2,
            LinearTask::MultinomialLogistic => self.n_outputs as usize,
            LinearTask::Regression => 0,
        }
    }
}

impl ClientFamily for LinearClient {
    fn family(&self) -> ModelFamily {
        ModelFamily::Linear
    }

    fn input_columns(&self) -> usize {
        self.quantizers.len()
    }

    fn column_bits(&self) -> u8 {
        self.output_bits
    }

    fn columns(&self, record: &[f64]) -> Vec<u64> {
        self.quantize(record)
    }

    fn result_values(&self) -> usize {
        self.n_outputs as usize
    }

    fn output_bits(&self) -> u8 {
        self.output_bits
    }

    fn n_scores(&self) -> usize {
        self.n_outputs as usize
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn validate(&self, n_features: usize) -> Result<(), ModelError> {
        check_shape(
            n_features,
            self.n_outputs as usize,
            self.input_bits,
            n_features * self.n_outputs as usize,
        )?;
        if self.quantizers.len() != n_features {
            return Err(ModelError::Inconsistent(format!(
                "{} quantizers for {n_features} features",
                self.quantizers.len()
            )));
        }
        if self.classes.len() != self.expected_classes() {
            return Err(ModelError::Inconsistent(format!(
                "{} class names for a {:?} model with {} outputs",
                self.classes.len(),
                self.task,
                self.n_outputs
            )));
        }
        if self.output_bits == 0 || self.output_bits > 62 {
            return Err(ModelError::Inconsistent(format!(
                "output bits {}",
                self.output_bits
            )));
        }
        Ok(())
    }

    fn predict(&self, outputs: &[i64]) -> Prediction {
        match self.task {
            LinearTask::BinaryLogistic => {
                let z = outputs[0] as f64 * self.output_scale;
                let p1 = 1.0 / (1.0 + (-z).exp());
                let class = usize::from(outputs[0] >= 0);
                Prediction {
                    class: Some(class),
                    label: self.classes[class].clone(),
                    scores: vec![1.0 - p1, p1],
                }
            }
            LinearTask::MultinomialLogistic => {
                let class = argmax(outputs);
                let zs: Vec<f64> = outputs
                    .iter()
                    .map(|&l| l as f64 * self.output_scale)
                    .collect();
                let m = zs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = zs.iter().map(|z| (z - m).exp()).collect();
                let sum: f64 = exps.iter().sum();
                Prediction {
                    class: Some(class),
                    label: self.classes[class].clone(),
                    scores: exps.iter().map(|e| e / sum).collect(),
                }
            }
            LinearTask::Regression => {
                let v = outputs[0] as f64 * self.output_scale;
                Prediction {
                    class: None,
                    label: format!("{v}"),
                    scores: vec![v],
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_bits_edges() {
        assert_eq!(signed_bits(0), 1);
        assert_eq!(signed_bits(-1), 1);
        assert_eq!(signed_bits(1), 2);
        assert_eq!(signed_bits(127), 8);
        assert_eq!(signed_bits(-128), 8);
        assert_eq!(signed_bits(128), 9);
    }

    #[test]
    fn bounds_for_small_model() {
        let b = prove_bounds(ParamSet::Glwe2048TUniform17, 2, 8, &[127, -127], &[5]).unwrap();
        assert_eq!(b.output_max, 127 * 255 + 5);
        assert_eq!(b.output_min, -127 * 255 + 5);
        assert_eq!(b.output_bits, 16);
        assert!(b.noise_margin_bits > 20.0);
    }

    /// A public-key input carries up to (2N + 1) fresh samples of noise: the margin shrinks by
    /// log2(4097) = 12 bits, and weights with a large L1 norm are proven for secret-key batches
    /// only.
    #[test]
    fn public_key_batches_cost_twelve_bits_of_margin() {
        let p = ParamSet::Glwe2048TUniform17;
        let sk = prove_bounds(p, 2, 8, &[127, -127], &[5]).unwrap();
        let pk = prove_bounds_for(p, Encryption::PublicKey, 2, 8, &[127, -127], &[5]).unwrap();
        assert_eq!(pk.output_bits, sk.output_bits);
        let lost = sk.noise_margin_bits - pk.noise_margin_bits;
        assert!((lost - 4097f64.log2()).abs() < 1e-9, "{lost}");
        // 784 inputs of 8 bits with weights of 2^7: 25 bits wide, an L1 norm of 2^16.6.
        let weights = vec![127i64; 784];
        let sk = prove_bounds(p, 784, 8, &weights, &[0]).unwrap();
        assert!(sk.noise_margin_bits > 0.0);
        let e = prove_bounds_for(p, Encryption::PublicKey, 784, 8, &weights, &[0]).unwrap_err();
        assert!(matches!(e, ModelError::Noise { .. }), "{e}");
    }

    #[test]
    fn overflowing_model_is_refused() {
        let e = prove_bounds(ParamSet::Glwe2048TUniform17, 1, 8, &[1 << 40], &[0]).unwrap_err();
        assert!(matches!(e, ModelError::Range { .. }), "{e}");
        let e = prove_bounds(
            ParamSet::Glwe2048TUniform17,
            2,
            1,
            &[1 << 30, -(1 << 30)],
            &[0],
        )
        .unwrap_err();
        assert!(matches!(e, ModelError::Noise { .. }), "{e}");
    }

    #[test]
    fn quantizer_clamps() {
        let q = Quantizer {
            min: 1.0,
            scale: 0.5,
        };
        assert_eq!(q.quantize(0.0, 4), 0);
        assert_eq!(q.quantize(2.0, 4), 2);
        assert_eq!(q.quantize(100.0, 4), 15);
        assert_eq!(q.quantize(f64::NAN, 4), 0);
    }
}
