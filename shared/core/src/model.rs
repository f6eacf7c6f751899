//! The quantized integer model IR, its plaintext reference evaluator, the compile-time noise and
//! range proof, and the two-part model package (server part with weights, client part without).

use crate::ids::ModelId;
use crate::params::ParamSet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the model package layout. Readers refuse other versions.
pub const MODEL_FORMAT_VERSION: u32 = 2;
/// Most features a model may take (keeps chunk sizes and weight tables bounded).
pub const MAX_FEATURES: usize = 4096;
/// Most outputs (classes or regression targets) a model may have.
pub const MAX_OUTPUTS: usize = 256;
/// Largest accepted serialized server part.
pub const MAX_SERVER_PART_BYTES: u64 = 64 << 20;
/// Largest accepted client part or manifest.
pub const MAX_CLIENT_PART_BYTES: u64 = 16 << 20;

/// What a model computes from its integer logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// One logit; class 1 when it is positive.
    BinaryLogistic,
    /// One logit per class; the prediction is the argmax.
    MultinomialLogistic,
    /// One output: the predicted value divided by the output scale.
    LinearRegression,
    /// A tree ensemble (classifier or regressor) evaluated with programmable bootstraps:
    /// the inputs are thermometer bits, the outputs score slots ([`crate::tree`]).
    TreeEnsemble,
}

impl ModelKind {
    pub fn is_classifier(self) -> bool {
        !matches!(self, ModelKind::LinearRegression)
    }

    /// Needs the data owner's evaluation key (bootstrapping) on the worker.
    pub fn bootstraps(self) -> bool {
        matches!(self, ModelKind::TreeEnsemble)
    }
}

/// A model the server cannot evaluate exactly, or a malformed model file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error(
        "model format version {found} is not supported (this build reads version {MODEL_FORMAT_VERSION})"
    )]
    Version { found: u32 },
    #[error("model has {n_features} features; between 1 and {MAX_FEATURES} are supported")]
    Features { n_features: usize },
    #[error("model has {n_outputs} outputs; between 1 and {MAX_OUTPUTS} are supported")]
    Outputs { n_outputs: usize },
    #[error("model input precision of {bits} bits is outside the supported 1..=16")]
    InputBits { bits: u8 },
    #[error("weight table has {found} entries, expected {expected} (outputs x features)")]
    Shape { found: usize, expected: usize },
    #[error(
        "model refused: output {output} can reach {value} on valid inputs, which needs {needed_bits} bits; the encoding holds at most {max_bits} bits next to the encryption noise. Lower n_bits or use fewer features"
    )]
    Range {
        output: usize,
        value: i128,
        needed_bits: u32,
        max_bits: u32,
    },
    #[error(
        "model refused: output {output}'s worst-case noise 2^{noise_log2:.1} reaches the decoding limit 2^{limit_log2}; results could decrypt wrongly. Lower n_bits or use fewer features"
    )]
    Noise {
        output: usize,
        noise_log2: f64,
        limit_log2: u32,
    },
    #[error("model part is inconsistent: {0}")]
    Inconsistent(String),
    #[error("model file is not valid: {0}")]
    Decode(String),
}

/// Worst-case bounds proven for a model, recorded in its package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// Bits of the message space: logits are decoded from the top `plaintext_bits` of 64.
    pub plaintext_bits: u8,
    /// Smallest and largest integer logit any valid input can produce.
    pub logit_min: i64,
    pub logit_max: i64,
    /// log2 of the worst-case absolute noise in a result coefficient.
    pub noise_log2: f64,
    /// Bits of headroom between that noise and half a decoding step.
    pub noise_margin_bits: f64,
}

/// Proves, from the integer weights alone, that every output of the model decodes exactly for
/// every input in `[0, 2^input_bits)`, and picks the message-space width.
///
/// With TUniform noise every fresh sample satisfies `|e| <= 2^b` (b = the parameter set's bound),
/// so a result coefficient carries noise of at most `2^b * sum_j |w_cj|`: a deterministic bound, not
/// a probabilistic one. Decoding rounds to the nearest multiple of `delta = 2^(64 - p)`, which is
/// exact while the noise is below `delta / 2`, and the logit itself must fit in p signed bits.
pub fn prove_bounds(
    params: ParamSet,
    n_features: usize,
    input_bits: u8,
    weights: &[i64],
    bias: &[i64],
) -> Result<Bounds, ModelError> {
    check_shape(n_features, bias.len(), input_bits, weights.len())?;
    let x_max = (1i128 << input_bits) - 1;
    let mut logit_min = i128::MAX;
    let mut logit_max = i128::MIN;
    let mut worst_l1: i128 = 0;
    let mut needed_bits = 1u32;
    let mut worst_output = 0usize;
    for (c, row) in weights.chunks_exact(n_features).enumerate() {
        let mut hi = bias[c] as i128;
        let mut lo = bias[c] as i128;
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
        logit_min = logit_min.min(lo);
        logit_max = logit_max.max(hi);
        // Signed p-bit range is [-2^(p-1), 2^(p-1) - 1].
        let bits = signed_bits(lo).max(signed_bits(hi));
        if bits > needed_bits {
            needed_bits = bits;
            worst_output = c;
        }
        if l1 > worst_l1 {
            worst_l1 = l1;
        }
    }
    let noise_bound_log2 = params.noise_bound_log2();
    // Noise <= 2^b * L1, and must stay strictly below delta/2 = 2^(63 - p).
    let noise_log2 = (noise_bound_log2 as f64) + (worst_l1.max(1) as f64).log2();
    let max_bits = 62u32.saturating_sub(noise_bound_log2);
    if needed_bits > max_bits {
        let value = if signed_bits(logit_max) >= signed_bits(logit_min) {
            logit_max
        } else {
            logit_min
        };
        return Err(ModelError::Range {
            output: worst_output,
            value,
            needed_bits,
            max_bits,
        });
    }
    let p = needed_bits;
    let half_step: i128 = 1i128 << (63 - p);
    let noise: i128 = worst_l1 << noise_bound_log2;
    if noise >= half_step {
        // Find the output with the largest L1 norm for the message.
        let output = weights
            .chunks_exact(n_features)
            .enumerate()
            .max_by_key(|(_, r)| r.iter().map(|w| (*w as i128).abs()).sum::<i128>())
            .map(|(c, _)| c)
            .unwrap_or(0);
        return Err(ModelError::Noise {
            output,
            noise_log2,
            limit_log2: 63 - p,
        });
    }
    Ok(Bounds {
        plaintext_bits: p as u8,
        logit_min: logit_min as i64,
        logit_max: logit_max as i64,
        noise_log2,
        noise_margin_bits: (63 - p) as f64 - noise_log2,
    })
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

/// Server part of a compiled model: integer weights, nothing about features or classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerModel {
    pub format_version: u32,
    pub kind: ModelKind,
    pub params: ParamSet,
    pub n_features: u32,
    pub n_outputs: u32,
    /// Bits of each quantized input: inputs lie in `[0, 2^input_bits)`.
    pub input_bits: u8,
    /// Message-space width chosen by [`prove_bounds`].
    pub plaintext_bits: u8,
    /// Row-major `n_outputs x n_features` integer weights.
    pub weights: Vec<i64>,
    /// One integer bias per output.
    pub bias: Vec<i64>,
    /// Tree ensembles: the bootstrap plan (`n_features` = thermometer bits, `n_outputs` =
    /// score slots, `plaintext_bits` = slot width).
    pub forest: Option<crate::tree::ForestPlan>,
}

impl ServerModel {
    /// Result ciphertexts (GLWEs) a chunk of `records` records produces.
    pub fn result_ciphertexts(&self, records: u32, n: usize) -> u32 {
        match &self.forest {
            Some(plan) => (records as usize * plan.n_slots as usize).div_ceil(n) as u32,
            None => self.n_outputs,
        }
    }

    /// Bootstraps per record (0 for linear models).
    pub fn pbs_per_record(&self) -> usize {
        self.forest.as_ref().map_or(0, |p| p.pbs_per_record())
    }

    fn validate_forest(&self, plan: &crate::tree::ForestPlan) -> Result<Bounds, ModelError> {
        plan.validate()
            .map_err(|e| ModelError::Inconsistent(e.to_string()))?;
        if self.kind != ModelKind::TreeEnsemble
            || !self.weights.is_empty()
            || !self.bias.is_empty()
            || self.n_features != plan.n_bits
            || self.n_outputs != plan.n_slots
            || self.plaintext_bits != plan.slot_bits
            || self.input_bits != 1
            || plan.n_bits as usize > MAX_FEATURES
            || plan.n_slots as usize > MAX_OUTPUTS
        {
            return Err(ModelError::Inconsistent(
                "tree ensemble fields disagree with its bootstrap plan".into(),
            ));
        }
        let worst = plan.outputs_per_slot().into_iter().max().unwrap_or(0);
        let noise_log2 = crate::tree::slot_sigma_log2(worst) + crate::tree::TAIL_SIGMAS.log2();
        Ok(Bounds {
            plaintext_bits: plan.slot_bits,
            logit_min: 0,
            logit_max: (1i64 << plan.slot_bits) - 1,
            noise_log2,
            noise_margin_bits: (63 - plan.slot_bits as u32) as f64 - noise_log2,
        })
    }

    /// Checks shape and re-proves the bounds; a model file that fails this is never evaluated.
    pub fn validate(&self) -> Result<Bounds, ModelError> {
        if self.format_version != MODEL_FORMAT_VERSION {
            return Err(ModelError::Version {
                found: self.format_version,
            });
        }
        match (&self.forest, self.kind) {
            (Some(plan), _) => return self.validate_forest(plan),
            (None, ModelKind::TreeEnsemble) => {
                return Err(ModelError::Inconsistent(
                    "tree ensemble without a bootstrap plan".into(),
                ));
            }
            (None, _) => {}
        }
        if self.bias.len() != self.n_outputs as usize {
            return Err(ModelError::Inconsistent(format!(
                "{} biases for {} outputs",
                self.bias.len(),
                self.n_outputs
            )));
        }
        let bounds = prove_bounds(
            self.params,
            self.n_features as usize,
            self.input_bits,
            &self.weights,
            &self.bias,
        )?;
        if bounds.plaintext_bits != self.plaintext_bits {
            return Err(ModelError::Inconsistent(format!(
                "declares {} plaintext bits, the weights need {}",
                self.plaintext_bits, bounds.plaintext_bits
            )));
        }
        Ok(bounds)
    }

    pub fn row(&self, output: usize) -> &[i64] {
        let f = self.n_features as usize;
        &self.weights[output * f..(output + 1) * f]
    }

    /// The plaintext integer reference: exactly what the encrypted evaluation must produce
    /// (tree ensembles: `x` are thermometer bits, the outputs are score-slot sums).
    pub fn eval_plain(&self, x: &[u64]) -> Vec<i64> {
        assert_eq!(x.len(), self.n_features as usize, "feature count");
        if let Some(plan) = &self.forest {
            let bits: Vec<bool> = x.iter().map(|&v| v != 0).collect();
            return plan
                .eval_slots(&bits)
                .into_iter()
                .map(|v| v as i64)
                .collect();
        }
        (0..self.n_outputs as usize)
            .map(|c| {
                self.row(c)
                    .iter()
                    .zip(x)
                    .fold(self.bias[c], |acc, (&w, &xi)| acc + w * xi as i64)
            })
            .collect()
    }

    /// Serialized form (bincode, fixed-width integers).
    pub fn to_bytes(&self) -> Vec<u8> {
        use bincode::Options;
        bincode_options()
            .serialize(self)
            .expect("server model serializes")
    }

    /// Reads and validates a server part, refusing anything over [`MAX_SERVER_PART_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        use bincode::Options;
        if bytes.len() as u64 > MAX_SERVER_PART_BYTES {
            return Err(ModelError::Decode(format!(
                "server part is {} bytes; the limit is {MAX_SERVER_PART_BYTES}",
                bytes.len()
            )));
        }
        let model: ServerModel = bincode_options()
            .with_limit(MAX_SERVER_PART_BYTES)
            .deserialize(bytes)
            .map_err(|e| ModelError::Decode(e.to_string()))?;
        model.validate()?;
        Ok(model)
    }
}

fn bincode_options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
}

/// Per-feature affine quantizer: `q = clamp(round((x - min) / scale), 0, 2^bits - 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantizer {
    pub min: f64,
    pub scale: f64,
}

impl Quantizer {
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

/// Client part of a compiled model: what the data owner needs to encrypt and to read results.
/// It holds no weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientModel {
    pub format_version: u32,
    pub kind: ModelKind,
    pub params: ParamSet,
    pub feature_names: Vec<String>,
    pub quantizers: Vec<Quantizer>,
    pub input_bits: u8,
    pub plaintext_bits: u8,
    pub n_outputs: u32,
    /// Class names, in logit order (binary: `[negative, positive]`); empty for regression.
    pub classes: Vec<String>,
    /// Name of the predicted column.
    pub target: String,
    /// Float logit (or predicted value) = `output_scale * integer logit`.
    pub output_scale: f64,
    /// Tree ensembles: thresholds, slot readout and post-processing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forest: Option<crate::tree::ForestClient>,
}

/// A decoded prediction for one record.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Class index (classifiers) or `None` (regression).
    pub class: Option<usize>,
    /// Class name, or the predicted value formatted.
    pub label: String,
    /// Class probabilities (classifiers) or the single predicted value.
    pub scores: Vec<f64>,
}

impl ClientModel {
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// Decrypted integer scores per record ([`ClientModel::predict`]'s input).
    pub fn n_scores(&self) -> usize {
        match &self.forest {
            Some(f) => f.slots.slots.len(),
            None => self.n_outputs as usize,
        }
    }

    /// Ciphertext columns per record: quantized features, or thermometer bits.
    pub fn n_columns(&self) -> usize {
        match &self.forest {
            Some(f) => f.thresholds.len(),
            None => self.n_features(),
        }
    }

    /// Encoding bits of an input column: a column value `v` is encrypted as `v * 2^(64 - bits)`.
    /// Bootstrapped models use tfhe's 2+2-bit shortint encoding with its padding bit (2^59).
    pub fn input_plaintext_bits(&self) -> u8 {
        if self.forest.is_some() {
            5
        } else {
            self.plaintext_bits
        }
    }

    /// One record (feature order) as its ciphertext column values.
    pub fn columns(&self, record: &[f64]) -> Vec<u64> {
        match &self.forest {
            Some(f) => f.columns(record),
            None => self.quantize(record),
        }
    }

    fn validate_forest(&self, f: &crate::tree::ForestClient) -> Result<(), ModelError> {
        let n = self.n_features();
        if self.kind != ModelKind::TreeEnsemble
            || n == 0
            || n > MAX_FEATURES
            || f.thresholds.is_empty()
            || f.thresholds.len() > MAX_FEATURES
            || f.thresholds
                .iter()
                .any(|t| t.feature as usize >= n || t.value.is_nan())
            || f.slots.slots.len() != f.slots.offsets.len()
            || f.slots.slots.is_empty()
            || f.slots
                .slots
                .iter()
                .flatten()
                .any(|&(s, _)| s >= self.n_outputs)
            || self.classes != f.readout.labels
            || !(f.scale.is_finite() && f.scale > 0.0)
            || !(1..=62).contains(&self.plaintext_bits)
        {
            return Err(ModelError::Inconsistent(
                "tree ensemble client part is inconsistent".into(),
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        if self.format_version != MODEL_FORMAT_VERSION {
            return Err(ModelError::Version {
                found: self.format_version,
            });
        }
        match (&self.forest, self.kind) {
            (Some(f), _) => return self.validate_forest(f),
            (None, ModelKind::TreeEnsemble) => {
                return Err(ModelError::Inconsistent(
                    "tree ensemble without its thresholds".into(),
                ));
            }
            (None, _) => {}
        }
        check_shape(
            self.n_features(),
            self.n_outputs as usize,
            self.input_bits,
            self.n_features() * self.n_outputs as usize,
        )?;
        if self.quantizers.len() != self.n_features() {
            return Err(ModelError::Inconsistent(format!(
                "{} quantizers for {} features",
                self.quantizers.len(),
                self.n_features()
            )));
        }
        let expected_classes = match self.kind {
            ModelKind::BinaryLogistic => 2,
            ModelKind::MultinomialLogistic => self.n_outputs as usize,
            ModelKind::LinearRegression | ModelKind::TreeEnsemble => 0,
        };
        if self.classes.len() != expected_classes {
            return Err(ModelError::Inconsistent(format!(
                "{} class names for a {:?} model with {} outputs",
                self.classes.len(),
                self.kind,
                self.n_outputs
            )));
        }
        if self.plaintext_bits == 0 || self.plaintext_bits > 62 {
            return Err(ModelError::Inconsistent(format!(
                "plaintext bits {}",
                self.plaintext_bits
            )));
        }
        Ok(())
    }

    /// Quantizes one record given in feature order.
    pub fn quantize(&self, record: &[f64]) -> Vec<u64> {
        record
            .iter()
            .zip(&self.quantizers)
            .map(|(&x, q)| q.quantize(x, self.input_bits))
            .collect()
    }

    /// Turns decrypted integer logits (tree ensembles: integer scores) into a prediction.
    pub fn predict(&self, logits: &[i64]) -> Prediction {
        if let Some(f) = &self.forest {
            let raw: Vec<f32> = logits
                .iter()
                .map(|&v| (v as f64 * f.scale) as f32)
                .collect();
            let (label, scores) = f.readout.finish(raw);
            let class = label
                .as_ref()
                .and_then(|l| f.readout.labels.iter().position(|c| c == l));
            return Prediction {
                class,
                label: label
                    .unwrap_or_else(|| format!("{}", scores.first().copied().unwrap_or(0.0))),
                scores: scores.iter().map(|&v| v as f64).collect(),
            };
        }
        match self.kind {
            ModelKind::TreeEnsemble => unreachable!("validated: a tree ensemble has its forest"),
            ModelKind::BinaryLogistic => {
                let z = logits[0] as f64 * self.output_scale;
                let p1 = 1.0 / (1.0 + (-z).exp());
                let class = usize::from(logits[0] >= 0);
                Prediction {
                    class: Some(class),
                    label: self.classes[class].clone(),
                    scores: vec![1.0 - p1, p1],
                }
            }
            ModelKind::MultinomialLogistic => {
                let class = argmax(logits);
                let zs: Vec<f64> = logits
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
            ModelKind::LinearRegression => {
                let v = logits[0] as f64 * self.output_scale;
                Prediction {
                    class: None,
                    label: format!("{v}"),
                    scores: vec![v],
                }
            }
        }
    }
}

/// Index of the largest logit; ties go to the lowest index (the same rule everywhere).
pub fn argmax(logits: &[i64]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

/// Accuracy figures computed when a model is compiled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CompileReport {
    /// Which records the figures are about (`"holdout"` or `"all records"`).
    pub evaluated_on: String,
    pub records: usize,
    /// Float model: accuracy (classifiers) or R^2 (regression).
    pub float_score: f64,
    /// Quantized integer model, same metric.
    pub quantized_score: f64,
    /// Share of records where the quantized model predicts what the float model does
    /// (regression: share within 1% of the target range).
    pub agreement: f64,
}

/// Published model manifest (`models/<id>/manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    pub format_version: u32,
    pub model_id: ModelId,
    pub kind: ModelKind,
    pub params: ParamSet,
    pub n_features: u32,
    pub n_outputs: u32,
    pub input_bits: u8,
    pub server_sha256: String,
    pub client_sha256: String,
    pub bounds: Bounds,
    pub report: CompileReport,
    /// Programmable bootstraps per record (0: none, no evaluation key needed). Ingest sizes
    /// chunks against the worker's time limit with it.
    #[serde(default)]
    pub pbs_per_record: u64,
}

/// A compiled model: both parts, serialized, and its manifest.
#[derive(Debug, Clone)]
pub struct ModelPackage {
    pub manifest: ModelManifest,
    pub server: ServerModel,
    pub client: ClientModel,
    pub server_bytes: Vec<u8>,
    pub client_bytes: Vec<u8>,
}

/// `model_id = SHA-256("fhe-batch model v1" || sha256(server) || sha256(client))[..16]`.
pub fn model_id_of(server_sha256: &[u8; 32], client_sha256: &[u8; 32]) -> ModelId {
    let mut h = Sha256::new();
    h.update(b"fhe-batch model v1");
    h.update(server_sha256);
    h.update(client_sha256);
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    ModelId::from_bytes(id)
}

impl ModelPackage {
    /// Builds a package from its two parts, checking that they agree and that the bounds hold.
    pub fn build(
        server: ServerModel,
        client: ClientModel,
        report: CompileReport,
    ) -> Result<Self, ModelError> {
        let bounds = server.validate()?;
        client.validate()?;
        if client.kind != server.kind
            || client.params != server.params
            || client.n_columns() != server.n_features as usize
            || client.n_outputs != server.n_outputs
            || client.input_bits != server.input_bits
            || client.plaintext_bits != server.plaintext_bits
        {
            return Err(ModelError::Inconsistent(
                "client and server parts describe different models".into(),
            ));
        }
        let server_bytes = server.to_bytes();
        let client_bytes = serde_json::to_vec_pretty(&client).expect("client model serializes");
        let s: [u8; 32] = Sha256::digest(&server_bytes).into();
        let c: [u8; 32] = Sha256::digest(&client_bytes).into();
        let manifest = ModelManifest {
            format_version: MODEL_FORMAT_VERSION,
            model_id: model_id_of(&s, &c),
            kind: server.kind,
            params: server.params,
            n_features: server.n_features,
            n_outputs: server.n_outputs,
            input_bits: server.input_bits,
            server_sha256: hex::encode(s),
            client_sha256: hex::encode(c),
            bounds,
            report,
            pbs_per_record: server.pbs_per_record() as u64,
        };
        Ok(Self {
            manifest,
            server,
            client,
            server_bytes,
            client_bytes,
        })
    }

    pub fn manifest_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.manifest).expect("manifest serializes")
    }
}

impl ModelManifest {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        if bytes.len() as u64 > MAX_CLIENT_PART_BYTES {
            return Err(ModelError::Decode("model manifest too large".into()));
        }
        let m: ModelManifest =
            serde_json::from_slice(bytes).map_err(|e| ModelError::Decode(e.to_string()))?;
        if m.format_version != MODEL_FORMAT_VERSION {
            return Err(ModelError::Version {
                found: m.format_version,
            });
        }
        Ok(m)
    }

    /// Checks a server part against this manifest (hash and id), then parses it.
    pub fn open_server(&self, bytes: &[u8]) -> Result<ServerModel, ModelError> {
        let s: [u8; 32] = Sha256::digest(bytes).into();
        if hex::encode(s) != self.server_sha256 {
            return Err(ModelError::Inconsistent(
                "server part does not match its manifest's hash".into(),
            ));
        }
        let mut c = [0u8; 32];
        hex::decode_to_slice(&self.client_sha256, &mut c)
            .map_err(|_| ModelError::Decode("client hash is not hex".into()))?;
        if model_id_of(&s, &c) != self.model_id {
            return Err(ModelError::Inconsistent(
                "model id does not match its parts".into(),
            ));
        }
        let server = ServerModel::from_bytes(bytes)?;
        if server.kind != self.kind
            || server.params != self.params
            || server.n_features != self.n_features
        {
            return Err(ModelError::Inconsistent(
                "server part disagrees with its manifest".into(),
            ));
        }
        Ok(server)
    }

    /// Checks a client part against this manifest, then parses it.
    pub fn open_client(&self, bytes: &[u8]) -> Result<ClientModel, ModelError> {
        let c: [u8; 32] = Sha256::digest(bytes).into();
        if hex::encode(c) != self.client_sha256 {
            return Err(ModelError::Inconsistent(
                "client part does not match its manifest's hash".into(),
            ));
        }
        let client: ClientModel =
            serde_json::from_slice(bytes).map_err(|e| ModelError::Decode(e.to_string()))?;
        client.validate()?;
        Ok(client)
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
        assert_eq!(b.logit_max, 127 * 255 + 5);
        assert_eq!(b.logit_min, -127 * 255 + 5);
        assert_eq!(b.plaintext_bits, 16);
        assert!(b.noise_margin_bits > 20.0);
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
