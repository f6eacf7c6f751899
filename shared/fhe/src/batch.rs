//! Whole batches: encrypt many records into a `.fheb` file and decrypt a job's results, with
//! chunks processed in parallel (rayon).
//!
//! The data owner's round trip for a linear model, with the worker's evaluation in between:
//!
//! ```
//! use fhe_batch_core::format::{BatchHeader, BatchLimits, ResultHeader};
//! use fhe_batch_core::params::ParamSet;
//! use fhe_batch_core::ports::{ChunkEvaluator, ChunkInput};
//! use fhe_batch_fhe::batch::{decrypt_job, encrypt_batch};
//! use fhe_batch_fhe::{GlweEvaluator, SecretKey};
//! use fhe_batch_train::data::synthetic_classification;
//! use fhe_batch_train::{TrainOptions, compile, train};
//!
//! // A model (on the model owner's side): 3 classes, 4 features, 8-bit inputs.
//! let data = synthetic_classification(300, 4, 3, 7);
//! let float = train(&data, &TrainOptions::default()).unwrap();
//! let pkg = compile(&float, &data, &data, 8, ParamSet::Glwe2048TUniform17).unwrap();
//!
//! // The data owner: a secret key that never leaves, records quantized and encrypted.
//! let key = SecretKey::generate(ParamSet::Glwe2048TUniform17);
//! let records: Vec<u64> = (0..10).flat_map(|i| pkg.client.columns(data.row(i))).collect();
//! let batch = encrypt_batch(&key, &pkg.client, pkg.manifest.model_id, &records, &|_| {});
//!
//! // The service: reads the header, evaluates the one chunk without any key.
//! let header = BatchHeader::parse(&batch, &BatchLimits::default()).unwrap();
//! let chunk = &header.chunks[0];
//! let payload = &batch[chunk.offset as usize..(chunk.offset + chunk.length) as usize];
//! let input = ChunkInput {
//!     payload,
//!     records: chunk.records,
//!     records_per_chunk: header.records_per_chunk,
//!     eval_key: None,
//!     encryption: header.encryption,
//! };
//! let body = GlweEvaluator.evaluate(&pkg.server, &input).unwrap();
//! let result = ResultHeader {
//!     params: header.params,
//!     ciphertexts: pkg.server.output_ciphertexts(chunk.records, 2048),
//!     chunk_index: 0,
//!     chunk_count: 1,
//!     records: chunk.records,
//!     output_bits: pkg.server.output_bits(),
//!     model_id: header.model_id,
//!     key_fingerprint: header.key_fingerprint,
//!     first_record: 0,
//!     binding: None,
//! }
//! .encode(&body);
//!
//! // Back with the data owner: exact integer scores, equal to the plaintext reference.
//! let files = vec![("000000.fher".to_string(), result)];
//! let scores = decrypt_job(&key, &pkg.client, &pkg.manifest.model_id, &files, &|_| {}).unwrap();
//! let reference: Vec<i64> = records
//!     .chunks_exact(4)
//!     .flat_map(|r| pkg.server.eval_plain(r))
//!     .collect();
//! assert_eq!(scores, reference);
//! let first = pkg.client.predict(&scores[..3]);
//! assert!(pkg.client.classes().contains(&first.label));
//! ```

use crate::glwe::{DecryptError, decrypt_linear_result};
use crate::keys::SecretKey;
use crate::public::Encryptor;
use fhe_batch_core::format::ResultHeader;
use fhe_batch_core::format::{ChunkLayout, assemble_batch};
use fhe_batch_core::ids::ModelId;
use fhe_batch_core::model::{ClientBody, ClientModel};
use rayon::prelude::*;

/// Encrypts quantized records (row-major, `records x n_features`) into a complete batch file.
/// `progress` is called with the number of records of each finished chunk.
pub fn encrypt_batch(
    key: &SecretKey,
    model: &ClientModel,
    model_id: ModelId,
    quantized: &[u64],
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<u8> {
    encrypt_batch_with(
        key,
        model,
        model_id,
        quantized,
        ChunkLayout::full(key.params()),
        progress,
    )
}

/// Encrypts records given as column values (`records x model.n_columns()`) into a batch with
/// the given chunk layout (records per chunk, evaluation key), with the secret key or a public
/// key (the layout's encryption is the encryptor's).
pub fn encrypt_batch_with<'k>(
    key: impl Into<Encryptor<'k>>,
    model: &ClientModel,
    model_id: ModelId,
    columns: &[u64],
    layout: ChunkLayout,
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<u8> {
    let key: Encryptor<'k> = key.into();
    let layout = ChunkLayout {
        encryption: key.kind(),
        ..layout
    };
    let f = model.input_columns();
    let per_chunk = layout.records_per_chunk as usize;
    assert!(
        !columns.is_empty() && columns.len().is_multiple_of(f),
        "whole records"
    );
    let bits = model.column_bits();
    let payloads: Vec<(u32, Vec<u8>)> = columns
        .par_chunks(per_chunk * f)
        .map(|chunk| {
            let records = (chunk.len() / f) as u32;
            let payload = key.encrypt_columns(layout.shape(f as u32), bits, chunk);
            progress(records as u64);
            (records, payload)
        })
        .collect();
    assemble_batch(
        key.params(),
        f as u32,
        layout,
        model_id,
        key.owner(),
        &payloads,
    )
}

/// Why a job's results cannot be turned into predictions.
#[derive(Debug, thiserror::Error)]
pub enum JobDecryptError {
    #[error("result file {name}: {source}")]
    File {
        name: String,
        #[source]
        source: DecryptError,
    },
    #[error("no result files were given")]
    Empty,
    #[error(
        "results disagree on the job's chunk count ({0} vs {1}); they come from different jobs"
    )]
    MixedJobs(u32, u32),
    #[error("chunk {0} appears twice")]
    Duplicate(u32),
    #[error(
        "result file {name} does not answer this batch of job {job}: {why}; the job is not decrypted (no partial predictions)"
    )]
    NotThisBatch {
        name: String,
        job: fhe_batch_core::ids::JobId,
        why: &'static str,
    },
    #[error(
        "results are incomplete: {missing} of {total} chunks missing (first missing: chunk {first})"
    )]
    Missing {
        missing: u32,
        total: u32,
        first: u32,
    },
}

/// Decrypts one chunk result into its records' scores (`records x model.n_scores()`): the
/// family's decryption and readout.
pub fn decrypt_result(
    key: &SecretKey,
    model: &ClientModel,
    model_id: &ModelId,
    bytes: &[u8],
) -> Result<(ResultHeader, Vec<i64>), DecryptError> {
    match &model.body {
        ClientBody::Linear(linear) => decrypt_linear_result(key, linear, model_id, bytes),
        ClientBody::TreeEnsemble(forest) => {
            crate::forest::decrypt_forest_result(key, forest, model_id, bytes)
        }
        ClientBody::NeuralNetwork(mlp) => crate::mlp::decrypt_mlp_result(key, mlp, model_id, bytes),
    }
}

/// Decrypts every chunk result of one job and returns all records' scores in record order
/// (`records x model.n_scores()`). Refuses incomplete, duplicated or mixed result sets.
pub fn decrypt_job(
    key: &SecretKey,
    model: &ClientModel,
    model_id: &ModelId,
    results: &[(String, Vec<u8>)],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<i64>, JobDecryptError> {
    decrypt_job_checked(key, model, model_id, None, results, progress)
}

/// The batch a job's results must answer: the job, and (when known) the SHA-256 of its batch
/// header, from the `.fheb` file or the job's manifest.
#[derive(Debug, Clone)]
pub struct ExpectedBatch {
    pub job: fhe_batch_core::ids::JobId,
    pub batch_header_sha256: Option<[u8; 32]>,
}

/// [`decrypt_job`], refusing every result that is not bound to `expected` (another job's or
/// another batch's result copied in, or one written before results were bound).
pub fn decrypt_job_for(
    key: &SecretKey,
    model: &ClientModel,
    model_id: &ModelId,
    expected: &ExpectedBatch,
    results: &[(String, Vec<u8>)],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<i64>, JobDecryptError> {
    decrypt_job_checked(key, model, model_id, Some(expected), results, progress)
}

fn check_binding(
    name: &str,
    header: &ResultHeader,
    expected: &ExpectedBatch,
) -> Result<(), JobDecryptError> {
    let refuse = |why| JobDecryptError::NotThisBatch {
        name: name.to_string(),
        job: expected.job.clone(),
        why,
    };
    let Some(b) = &header.binding else {
        return Err(refuse(
            "it names no job (written before results were bound; decrypt it with --results DIR)",
        ));
    };
    if !b.is_for_job(&expected.job) {
        return Err(refuse("it was computed for another job"));
    }
    if expected
        .batch_header_sha256
        .is_some_and(|h| h != b.batch_header_sha256)
    {
        return Err(refuse("it was computed for another batch"));
    }
    Ok(())
}

fn decrypt_job_checked(
    key: &SecretKey,
    model: &ClientModel,
    model_id: &ModelId,
    expected: Option<&ExpectedBatch>,
    results: &[(String, Vec<u8>)],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<i64>, JobDecryptError> {
    if results.is_empty() {
        return Err(JobDecryptError::Empty);
    }
    let mut decrypted = results
        .par_iter()
        .map(|(name, bytes)| {
            let r = decrypt_result(key, model, model_id, bytes);
            let r = r.map_err(|source| JobDecryptError::File {
                name: name.clone(),
                source,
            })?;
            if let Some(expected) = expected {
                check_binding(name, &r.0, expected)?;
            }
            progress(r.0.records as u64);
            Ok(r)
        })
        .collect::<Result<Vec<_>, JobDecryptError>>()?;
    decrypted.sort_by_key(|(h, _)| h.chunk_index);
    let total = decrypted[0].0.chunk_count;
    // Records per chunk: every chunk but the last is full.
    let n = if total > 1 {
        decrypted[0].0.records as u64
    } else {
        key.params().polynomial_size() as u64
    };
    let mut expected = 0u32;
    for (h, _) in &decrypted {
        if h.chunk_count != total {
            return Err(JobDecryptError::MixedJobs(total, h.chunk_count));
        }
        if h.chunk_index < expected {
            return Err(JobDecryptError::Duplicate(h.chunk_index));
        }
        if h.chunk_index > expected {
            break;
        }
        if h.first_record != h.chunk_index as u64 * n
            || (h.chunk_index + 1 < total && h.records as u64 != n)
        {
            return Err(JobDecryptError::File {
                name: format!("chunk {}", h.chunk_index),
                source: DecryptError::Mismatch("record numbering is inconsistent".into()),
            });
        }
        expected += 1;
    }
    if expected != total || decrypted.len() != total as usize {
        return Err(JobDecryptError::Missing {
            missing: total.saturating_sub(decrypted.len() as u32).max(1),
            total,
            first: expected,
        });
    }
    Ok(decrypted.into_iter().flat_map(|(_, l)| l).collect())
}
