//! Compiled models: one sum type over the model families, each family behind the same small
//! set of methods, and the two-part model package.
//!
//! A model comes in two parts. The **server part** ([`ServerModel`]) is what a worker
//! evaluates on ciphertexts; the **client part** ([`ClientModel`]) is what the data owner needs
//! to encrypt records and read results, and holds no weights or leaf values. Each part is a
//! shared header (format version, parameter set) plus a per-family body:
//!
//! | family | server body | client body |
//! |---|---|---|
//! | [`ModelFamily::Linear`] | [`linear::LinearServer`] | [`linear::LinearClient`] |
//! | [`ModelFamily::TreeEnsemble`] | [`crate::tree::ForestPlan`] | [`crate::tree::ForestClient`] |
//! | [`ModelFamily::NeuralNetwork`] | [`crate::mlp::MlpServer`] | [`crate::mlp::MlpClient`] |
//!
//! Ingest, the worker, the CLI and the benchmarks call [`ServerFamily`] and [`ClientFamily`]
//! through [`ServerModel`] and [`ClientModel`], never matching on the family: the one match per
//! part is [`ServerModel::family_impl`] / [`ClientModel::family_impl`].
//!
//! Vocabulary, one meaning each:
//! - *input columns*: ciphertext columns per record (quantized features, or thermometer bits);
//! - *result values*: decoded integers per record in a result (linear outputs, or score slots);
//! - *scores*: the integers a prediction is read from (linear outputs, or per-class tree scores);
//! - *output ciphertexts*: GLWEs in one chunk's result.

pub mod linear;
mod package;
pub mod prefix;

pub use linear::{Bounds, LinearClient, LinearServer, LinearTask, Quantizer};
pub use package::{CompileReport, ModelManifest, ModelPackage, model_id_of};
pub use prefix::{ClientPrefix, PrefixError, TextColumn};

use crate::mlp::{MlpClient, MlpServer};
use crate::params::{Encryption, ParamSet};
use crate::tree::{ForestClient, ForestPlan};
use serde::{Deserialize, Serialize};

/// Version of the model package layout (server part, client part, manifest). Readers refuse
/// other versions. Version 3 made each part a per-family body.
pub const MODEL_FORMAT_VERSION: u32 = 3;
/// Most features (and input columns) a model may take.
pub const MAX_FEATURES: usize = 4096;
/// Most outputs (classes, regression targets or score slots) a model may have.
pub const MAX_OUTPUTS: usize = 256;
/// Largest accepted serialized server part.
pub const MAX_SERVER_PART_BYTES: u64 = 64 << 20;
/// Largest accepted client part or manifest.
pub const MAX_CLIENT_PART_BYTES: u64 = 16 << 20;

/// The model families the service evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFamily {
    /// Logistic and linear regression: `W x + b` on GLWE columns, no key, no bootstrap.
    Linear,
    /// Decision trees, random forests, gradient boosting: thermometer bits in, one programmable
    /// bootstrap per pair of sibling leaves, packed score slots out.
    TreeEnsemble,
    /// Multi-layer perceptrons: the first layer on GLWE columns, one programmable bootstrap per
    /// hidden neuron (bias, activation and requantization in its lookup table), packed scores
    /// out.
    NeuralNetwork,
}

impl ModelFamily {
    /// Needs the data owner's evaluation key (bootstrapping) on the worker.
    pub fn bootstraps(self) -> bool {
        matches!(self, ModelFamily::TreeEnsemble | ModelFamily::NeuralNetwork)
    }
}

impl std::fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelFamily::Linear => "linear",
            ModelFamily::TreeEnsemble => "tree ensemble",
            ModelFamily::NeuralNetwork => "neural network",
        })
    }
}

/// A model the server cannot evaluate exactly, or a malformed model file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error(
        "model format version {found} is not supported (this build reads version {MODEL_FORMAT_VERSION}); recompile the model with `fhe-batch train` or `fhe-batch import` and publish it again"
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
    /// Records the client-side preprocessing cannot take: every one is listed, none is
    /// encrypted.
    #[error(
        "{count} records cannot be preprocessed for this model: {rows}. Fix or drop them before encrypting"
    )]
    Records { count: usize, rows: String },
    #[error("model file is not valid: {0}")]
    Decode(String),
}

impl ModelError {
    /// The error for records (1-based rows) a client-side preprocessing refused: every row
    /// named, the first ones with the reason.
    pub fn refused_records(bad: &[(usize, PrefixError)]) -> Self {
        const DETAILED: usize = 20;
        let mut rows: Vec<String> = bad
            .iter()
            .take(DETAILED)
            .map(|(row, e)| format!("row {row} ({e})"))
            .collect();
        if bad.len() > DETAILED {
            let rest: Vec<String> = bad[DETAILED..].iter().map(|(r, _)| r.to_string()).collect();
            rows.push(format!("rows {}", rest.join(", ")));
        }
        ModelError::Records {
            count: bad.len(),
            rows: rows.join("; "),
        }
    }
}

/// What every family's server part answers: the shape of its inputs and results, its cost, its
/// proof and its plaintext reference.
pub trait ServerFamily {
    fn family(&self) -> ModelFamily;
    /// Ciphertext columns per record a batch for this model carries.
    fn input_columns(&self) -> u32;
    /// Decoded integers per record in a result (linear outputs, or score slots).
    fn result_values(&self) -> u32;
    /// Output GLWE ciphertexts one chunk of `records` records produces (`n` = polynomial size).
    fn output_ciphertexts(&self, records: u32, n: usize) -> u32;
    /// Result values are decoded from the top `output_bits` bits of 64.
    fn output_bits(&self) -> u8;
    /// Programmable bootstraps per record (0: no evaluation key needed).
    fn pbs_per_record(&self) -> usize;
    /// Proves that every result value decodes exactly (or, for networks, within the proven
    /// error) under `params` for inputs encrypted as `encryption` says, or says why not.
    fn prove(&self, params: ParamSet, encryption: Encryption) -> Result<Bounds, ModelError>;
    /// The plaintext integer reference: exactly the result values the encrypted evaluation of
    /// one record's input columns must decrypt to.
    fn eval_plain(&self, columns: &[u64]) -> Vec<i64>;
}

/// What every family's client part answers: how a record becomes input columns, how results
/// decode, and how scores become a prediction.
pub trait ClientFamily {
    fn family(&self) -> ModelFamily;
    /// Ciphertext columns per record.
    fn input_columns(&self) -> usize;
    /// Encoding bits of an input column: a value `v` is encrypted as `v * 2^(64 - bits)`.
    fn column_bits(&self) -> u8;
    /// One record (feature order) as its input column values.
    fn columns(&self, record: &[f64]) -> Vec<u64>;
    /// Result values per record, decoded from the top [`ClientFamily::output_bits`] bits.
    fn result_values(&self) -> usize;
    fn output_bits(&self) -> u8;
    /// Scores per record ([`ClientFamily::predict`]'s input) after the family's readout of the
    /// result values.
    fn n_scores(&self) -> usize;
    /// Class names in score order; empty for a regressor.
    fn classes(&self) -> &[String];
    /// Checks the part for a model of `n_features` features.
    fn validate(&self, n_features: usize) -> Result<(), ModelError>;
    /// One record's scores to a prediction.
    fn predict(&self, scores: &[i64]) -> Prediction;
}

/// The per-family body of a server part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerBody {
    Linear(LinearServer),
    TreeEnsemble(ForestPlan),
    NeuralNetwork(MlpServer),
}

/// The per-family body of a client part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum ClientBody {
    Linear(LinearClient),
    TreeEnsemble(ForestClient),
    NeuralNetwork(MlpClient),
}

/// Server part of a compiled model: what a worker evaluates. Nothing about features or classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerModel {
    pub format_version: u32,
    pub params: ParamSet,
    pub body: ServerBody,
}

/// Client part of a compiled model: what the data owner needs to encrypt and to read results.
/// It holds no weights or leaf values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientModel {
    pub format_version: u32,
    pub params: ParamSet,
    /// The raw columns a record is read from, in order.
    pub feature_names: Vec<String>,
    /// Name of the predicted column.
    pub target: String,
    pub body: ClientBody,
    /// Preprocessing run on each raw record before the family quantizes it (a pipeline's
    /// imputer, encoders, normalizer); absent when the model reads the raw columns (a per-
    /// feature scaler is folded into the model instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<ClientPrefix>,
}

/// A decoded prediction for one record.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Class index (classifiers) or `None` (regression).
    pub class: Option<usize>,
    /// Class name, or the predicted value formatted.
    pub label: String,
    /// Class probabilities (classifiers) or the predicted value(s).
    pub scores: Vec<f64>,
}

impl ServerModel {
    pub fn new(params: ParamSet, body: ServerBody) -> Self {
        Self {
            format_version: MODEL_FORMAT_VERSION,
            params,
            body,
        }
    }

    /// The family's implementation: the one place the server part matches on its family.
    pub fn family_impl(&self) -> &dyn ServerFamily {
        match &self.body {
            ServerBody::Linear(m) => m,
            ServerBody::TreeEnsemble(p) => p,
            ServerBody::NeuralNetwork(m) => m,
        }
    }

    pub fn family(&self) -> ModelFamily {
        self.family_impl().family()
    }

    pub fn input_columns(&self) -> u32 {
        self.family_impl().input_columns()
    }

    pub fn result_values(&self) -> u32 {
        self.family_impl().result_values()
    }

    pub fn output_ciphertexts(&self, records: u32, n: usize) -> u32 {
        self.family_impl().output_ciphertexts(records, n)
    }

    pub fn output_bits(&self) -> u8 {
        self.family_impl().output_bits()
    }

    pub fn pbs_per_record(&self) -> usize {
        self.family_impl().pbs_per_record()
    }

    /// The plaintext integer reference ([`ServerFamily::eval_plain`]).
    pub fn eval_plain(&self, columns: &[u64]) -> Vec<i64> {
        assert_eq!(
            columns.len(),
            self.input_columns() as usize,
            "input column count"
        );
        self.family_impl().eval_plain(columns)
    }

    /// Checks the version and re-proves the bounds; a model file that fails this is never
    /// evaluated.
    pub fn validate(&self) -> Result<Bounds, ModelError> {
        if self.format_version != MODEL_FORMAT_VERSION {
            return Err(ModelError::Version {
                found: self.format_version,
            });
        }
        self.family_impl().prove(self.params, Encryption::SecretKey)
    }

    /// The proof for batches encrypted as `encryption` says (the model's format version is
    /// checked by [`ServerModel::validate`]). A model proven for secret-key batches may still be
    /// refused for public-key ones, whose fresh noise is larger.
    pub fn prove_for(&self, encryption: Encryption) -> Result<Bounds, ModelError> {
        self.family_impl().prove(self.params, encryption)
    }

    /// Serialized form (bincode, fixed-width integers).
    pub fn to_bytes(&self) -> Vec<u8> {
        use bincode::Options;
        bincode_options()
            .serialize(self)
            .expect("server model serializes")
    }

    /// Reads and validates a server part, refusing anything over [`MAX_SERVER_PART_BYTES`] and
    /// any other format version (read first, so an old package gets the version error rather
    /// than a decoding one).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        use bincode::Options;
        if bytes.len() as u64 > MAX_SERVER_PART_BYTES {
            return Err(ModelError::Decode(format!(
                "server part is {} bytes; the limit is {MAX_SERVER_PART_BYTES}",
                bytes.len()
            )));
        }
        if let Some(v) = bytes.first_chunk::<4>().map(|b| u32::from_le_bytes(*b))
            && v != MODEL_FORMAT_VERSION
        {
            return Err(ModelError::Version { found: v });
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

/// Reads a JSON document's `format_version` alone, so a part of another version is refused by
/// its version before its layout is read.
pub(crate) fn json_format_version(bytes: &[u8]) -> Result<u32, ModelError> {
    #[derive(Deserialize)]
    struct Versioned {
        format_version: u32,
    }
    serde_json::from_slice::<Versioned>(bytes)
        .map(|v| v.format_version)
        .map_err(|e| ModelError::Decode(e.to_string()))
}

impl ClientModel {
    pub fn new(
        params: ParamSet,
        feature_names: Vec<String>,
        target: String,
        body: ClientBody,
    ) -> Self {
        Self {
            format_version: MODEL_FORMAT_VERSION,
            params,
            feature_names,
            target,
            body,
            prefix: None,
        }
    }

    /// The same part with `prefix` run on every raw record first.
    pub fn with_prefix(mut self, prefix: ClientPrefix) -> Self {
        self.prefix = Some(prefix);
        self
    }

    /// The family's implementation: the one place the client part matches on its family.
    pub fn family_impl(&self) -> &dyn ClientFamily {
        match &self.body {
            ClientBody::Linear(m) => m,
            ClientBody::TreeEnsemble(f) => f,
            ClientBody::NeuralNetwork(m) => m,
        }
    }

    pub fn family(&self) -> ModelFamily {
        self.family_impl().family()
    }

    /// Raw columns per record.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// One raw record (missing cells NaN) to the features the family quantizes: the prefix
    /// applied, or the record itself. Errors name what is wrong with the record.
    pub fn features(&self, record: &[f64]) -> Result<Vec<f64>, PrefixError> {
        match &self.prefix {
            Some(p) => p.apply(record),
            None if record.len() != self.n_features() => Err(PrefixError::Record(format!(
                "{} values for {} columns",
                record.len(),
                self.n_features()
            ))),
            None if record.iter().any(|v| v.is_nan()) => Err(PrefixError::Record(
                "a value is missing and the model has no imputer".into(),
            )),
            None => Ok(record.to_vec()),
        }
    }

    /// One raw record's input column values ([`ClientModel::features`], then the family's
    /// quantization).
    pub fn record_columns(&self, record: &[f64]) -> Result<Vec<u64>, PrefixError> {
        Ok(self.columns(&self.features(record)?))
    }

    pub fn input_columns(&self) -> usize {
        self.family_impl().input_columns()
    }

    pub fn column_bits(&self) -> u8 {
        self.family_impl().column_bits()
    }

    /// Every raw record (row-major, [`ClientModel::n_features`] values each) to input column
    /// values. One record the preprocessing cannot take fails them all, and every such record
    /// is named by its 1-based row (the first ones with the reason).
    pub fn records_columns(&self, raw: &[f64]) -> Result<Vec<u64>, ModelError> {
        let f = self.n_features().max(1);
        let mut out = Vec::with_capacity(raw.len() / f * self.input_columns());
        let mut bad: Vec<(usize, PrefixError)> = Vec::new();
        for (i, r) in raw.chunks(f).enumerate() {
            match self.record_columns(r) {
                Ok(c) if bad.is_empty() => out.extend(c),
                Ok(_) => {}
                Err(e) => bad.push((i + 1, e)),
            }
        }
        match bad.is_empty() {
            true => Ok(out),
            false => Err(ModelError::refused_records(&bad)),
        }
    }

    /// Input column values of one record's model features (after the prefix, if any; see
    /// [`ClientModel::record_columns`] for raw records).
    pub fn columns(&self, features: &[f64]) -> Vec<u64> {
        self.family_impl().columns(features)
    }

    pub fn result_values(&self) -> usize {
        self.family_impl().result_values()
    }

    pub fn output_bits(&self) -> u8 {
        self.family_impl().output_bits()
    }

    pub fn n_scores(&self) -> usize {
        self.family_impl().n_scores()
    }

    pub fn classes(&self) -> &[String] {
        self.family_impl().classes()
    }

    pub fn is_classifier(&self) -> bool {
        !self.classes().is_empty()
    }

    pub fn predict(&self, scores: &[i64]) -> Prediction {
        self.family_impl().predict(scores)
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        if self.format_version != MODEL_FORMAT_VERSION {
            return Err(ModelError::Version {
                found: self.format_version,
            });
        }
        if let Some(p) = &self.prefix {
            let widths = p
                .widths()
                .map_err(|e| ModelError::Inconsistent(e.to_string()))?;
            if p.inputs != self.n_features() {
                return Err(ModelError::Inconsistent(format!(
                    "the client-side preprocessing reads {} columns; the part names {}",
                    p.inputs,
                    self.n_features()
                )));
            }
            return self.family_impl().validate(widths[p.output]);
        }
        self.family_impl().validate(self.n_features())
    }

    /// Parses and validates a client part (JSON), refusing other format versions by name.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        if bytes.len() as u64 > MAX_CLIENT_PART_BYTES {
            return Err(ModelError::Decode("client part too large".into()));
        }
        let version = json_format_version(bytes)?;
        if version != MODEL_FORMAT_VERSION {
            return Err(ModelError::Version { found: version });
        }
        let client: ClientModel =
            serde_json::from_slice(bytes).map_err(|e| ModelError::Decode(e.to_string()))?;
        client.validate()?;
        Ok(client)
    }
}

/// Index of the largest value; ties go to the lowest index (the same rule everywhere: linear
/// logits, tree scores, float references).
///
/// ```
/// assert_eq!(fhe_batch_core::model::argmax(&[1, 5, 5, 2]), 1);
/// assert_eq!(fhe_batch_core::model::argmax(&[0.5f32, -1.0]), 0);
/// ```
pub fn argmax<T: PartialOrd>(values: &[T]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}
