//! One attempt at a chunk, as the worker settles it: [`AttemptError`] (storage trouble, a
//! failure a retry may fix, or a chunk that can never succeed), how it ends ([`Settled`]), and
//! the checks of a message against its model.

use crate::format::ResultHeader;
use crate::job::{ChunkMessage, FailureKind};
use crate::model::ServerModel;
use crate::ports::StoreError;

/// Why an attempt stopped before it had an outcome.
#[derive(Debug)]
pub(super) enum AttemptError {
    /// Storage trouble: retried when the error is retryable, else the chunk fails (see
    /// [`AttemptError::settle`]).
    Store(StoreError),
    /// A failure a retry may fix: an injected fault, a panic in the evaluator.
    Transient(String),
    /// The chunk can never succeed.
    Permanent { kind: FailureKind, reason: String },
}

impl From<StoreError> for AttemptError {
    fn from(e: StoreError) -> Self {
        AttemptError::Store(e)
    }
}

/// How a failed attempt ends: left for redelivery, or recorded as the chunk's failure.
pub(super) enum Settled {
    Retry(String),
    Fail(FailureKind, String),
}

impl AttemptError {
    pub(super) fn model(reason: String) -> Self {
        AttemptError::Permanent {
            kind: FailureKind::Model,
            reason,
        }
    }

    pub(super) fn invalid_chunk(reason: String) -> Self {
        AttemptError::Permanent {
            kind: FailureKind::InvalidChunk,
            reason,
        }
    }

    /// Decides whether a retry may help. A storage error that is not retryable fails the
    /// chunk; the batch object being gone is named as such.
    pub(super) fn settle(self, msg: &ChunkMessage) -> Settled {
        match self {
            AttemptError::Transient(reason) => Settled::Retry(reason),
            AttemptError::Permanent { kind, reason } => Settled::Fail(kind, reason),
            AttemptError::Store(e) if e.is_retryable() => Settled::Retry(e.to_string()),
            AttemptError::Store(StoreError::NotFound { key }) if key == msg.batch_key => {
                Settled::Fail(
                    FailureKind::InvalidChunk,
                    format!(
                        "the batch {key} was deleted before chunk {} was read",
                        msg.chunk
                    ),
                )
            }
            AttemptError::Store(e) => Settled::Fail(FailureKind::InvalidChunk, e.to_string()),
        }
    }
}

/// Checks the message against its model: the chunk's length, a model proven for the chunk's
/// kind of encryption, and a well-formed hash (returned).
pub(super) fn check_message(
    msg: &ChunkMessage,
    model: &ServerModel,
) -> Result<[u8; 32], AttemptError> {
    if msg.encryption != crate::params::Encryption::SecretKey {
        // The loaded model was proven for secret-key batches; a public-key chunk's larger
        // fresh noise is proven here (a linear model's proof is a pass over its weights, a
        // bootstrapped model's a pass over its plan: negligible next to the evaluation).
        model.prove_for(msg.encryption).map_err(|e| {
            AttemptError::invalid_chunk(format!(
                "chunk {} is a {} chunk and model {} is not proven for them: {e}",
                msg.chunk, msg.encryption, msg.model_id
            ))
        })?;
    }
    let expected_len = msg.shape(model.input_columns()).payload_len(msg.params);
    if msg.length != expected_len {
        return Err(AttemptError::invalid_chunk(format!(
            "chunk {} is {} bytes; model {} needs {expected_len}",
            msg.chunk, msg.length, msg.model_id
        )));
    }
    msg.sha256_bytes()
        .map_err(|e| AttemptError::invalid_chunk(e.to_string()))
}

/// The header of the chunk's result file.
pub(super) fn result_header(msg: &ChunkMessage, model: &ServerModel) -> ResultHeader {
    ResultHeader {
        params: msg.params,
        ciphertexts: model.output_ciphertexts(msg.records, msg.params.polynomial_size()),
        chunk_index: msg.chunk,
        chunk_count: msg.chunk_count,
        records: msg.records,
        output_bits: model.output_bits(),
        model_id: msg.model_id,
        key_fingerprint: msg.key_fingerprint,
        binding: msg.result_binding(),
        first_record: msg.first_record,
    }
}
