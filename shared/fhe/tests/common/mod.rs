//! What the encrypted-evaluation tests share: one secret key with its evaluation key installed
//! in a worker's evaluator, and a chunk encrypted, evaluated and decrypted through them.

use fhe_batch_core::format::{ChunkShape, ResultHeader};
use fhe_batch_core::model::ModelPackage;
use fhe_batch_core::params::{Encryption, ParamSet};
use fhe_batch_core::pipeline::{ChunkEvaluator, ChunkInput};
use fhe_batch_fhe::forest::{EvalKey, eval_key_id};
use fhe_batch_fhe::{Encryptor, FheEvaluator, PublicKey, SecretKey};
use std::sync::OnceLock;

pub const PARAMS: ParamSet = ParamSet::Glwe2048TUniform17;

pub struct Keys {
    pub secret: SecretKey,
    pub public: PublicKey,
    pub bytes: Vec<u8>,
    pub evaluator: FheEvaluator,
}

pub fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        let secret = SecretKey::generate(PARAMS);
        let bytes = EvalKey::generate(&secret).to_bytes();
        let evaluator = FheEvaluator::new(None);
        evaluator
            .install_eval_key(&eval_key_id(&bytes), bytes.clone())
            .unwrap();
        Keys {
            public: PublicKey::generate(&secret, Some(eval_key_id(&bytes))),
            secret,
            bytes,
            evaluator,
        }
    })
}

/// Encrypts `records` records of input column values (row-major) in one chunk of `slots`,
/// evaluates it with the worker's evaluator and decrypts the result values.
/// The records are encrypted as `encryption` says (the owner's secret key or its public key).
pub fn run_chunk_as(
    encryption: Encryption,
    pkg: &ModelPackage,
    values: &[u64],
    records: usize,
    slots: usize,
) -> Vec<i64> {
    let k = keys();
    let shape = ChunkShape {
        input_columns: pkg.client.input_columns() as u32,
        records_per_chunk: slots as u32,
        encryption,
    };
    let encryptor = match encryption {
        Encryption::SecretKey => Encryptor::Secret(&k.secret),
        Encryption::PublicKey => Encryptor::Public(&k.public),
    };
    let payload = encryptor.encrypt_columns(shape, pkg.client.column_bits(), values);
    let id = eval_key_id(&k.bytes);
    let body = k
        .evaluator
        .evaluate(
            &pkg.server,
            &ChunkInput {
                payload: &payload,
                records: records as u32,
                records_per_chunk: slots as u32,
                eval_key: Some(&id),
                encryption,
            },
        )
        .unwrap();
    let header = ResultHeader {
        params: PARAMS,
        ciphertexts: pkg.server.output_ciphertexts(records as u32, 2048),
        chunk_index: 0,
        chunk_count: 1,
        records: records as u32,
        output_bits: pkg.server.output_bits(),
        model_id: pkg.manifest.model_id,
        key_fingerprint: k.secret.fingerprint(),
        first_record: 0,
        binding: None,
    };
    let bytes = header.encode(&body);
    fhe_batch_fhe::batch::decrypt_result(&k.secret, &pkg.client, &pkg.manifest.model_id, &bytes)
        .unwrap()
        .1
}
