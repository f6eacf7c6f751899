//! The model package: both parts serialized, and the manifest published beside them
//! (`models/<id>/manifest.json`), with a content-derived model id.

use super::{
    Bounds, ClientModel, MAX_CLIENT_PART_BYTES, MODEL_FORMAT_VERSION, ModelError, ModelFamily,
    ServerModel, json_format_version,
};
use crate::ids::ModelId;
use crate::params::{Encryption, ParamSet};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// Published model manifest (`models/<id>/manifest.json`): what ingest checks a batch against
/// without reading either part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    pub format_version: u32,
    pub model_id: ModelId,
    pub family: ModelFamily,
    pub params: ParamSet,
    /// Ciphertext columns per record a batch for this model carries.
    pub input_columns: u32,
    /// Programmable bootstraps per record (0: none, no evaluation key needed). Ingest sizes
    /// chunks against the worker's time limit with it.
    pub pbs_per_record: u64,
    pub server_sha256: String,
    pub client_sha256: String,
    pub bounds: Bounds,
    pub report: CompileReport,
    /// Whether the model is proven for batches encrypted with the owner's public key, whose
    /// fresh noise is larger (absent in manifests written before public-key batches: not
    /// proven; recompile to prove it).
    #[serde(default)]
    pub public_key_batches: bool,
    /// Why the model is not proven for public-key batches, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_refusal: Option<String>,
}

impl ModelManifest {
    /// Refuses batches of an encryption kind this model is not proven for, saying why.
    pub fn check_encryption(&self, encryption: Encryption) -> Result<(), ModelError> {
        if encryption == Encryption::PublicKey && !self.public_key_batches {
            return Err(ModelError::Inconsistent(format!(
                "model {} is not proven for public-key batches: {}",
                self.model_id,
                self.public_key_refusal
                    .as_deref()
                    .unwrap_or("it was compiled before public-key batches existed; recompile it")
            )));
        }
        Ok(())
    }
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
        let public_key = server.prove_for(Encryption::PublicKey);
        client.validate()?;
        if client.family() != server.family()
            || client.params != server.params
            || client.input_columns() != server.input_columns() as usize
            || client.result_values() != server.result_values() as usize
            || client.output_bits() != server.output_bits()
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
            family: server.family(),
            params: server.params,
            input_columns: server.input_columns(),
            pbs_per_record: server.pbs_per_record() as u64,
            server_sha256: hex::encode(s),
            client_sha256: hex::encode(c),
            bounds,
            report,
            public_key_batches: public_key.is_ok(),
            public_key_refusal: public_key.err().map(|e| e.to_string()),
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
        let version = json_format_version(bytes)?;
        if version != MODEL_FORMAT_VERSION {
            return Err(ModelError::Version { found: version });
        }
        serde_json::from_slice(bytes).map_err(|e| ModelError::Decode(e.to_string()))
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
        if server.family() != self.family
            || server.params != self.params
            || server.input_columns() != self.input_columns
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
        ClientModel::from_json(bytes)
    }
}
