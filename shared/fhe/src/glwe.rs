//! GLWE column packing for linear models.
//!
//! The client quantizes each feature and encrypts feature `j` of records `r .. r + N` in the N
//! coefficients of one GLWE ciphertext, encoded as `x * delta` with `delta = 2^(64 - p)`. It
//! encrypts with its secret key, seeded: the mask is regenerated from a 128-bit seed, so only
//! the N body coefficients travel (8 bytes per value).
//!
//! The server computes every output as `sum_j w_cj * GLWE_j + b_c * delta`: plaintext-scalar
//! multiply-adds of whole ciphertexts, wrapping mod 2^64. No bootstrapping, no server key.
//! Coefficient `i` of output `c` then decrypts to record `i`'s exact integer logit, because
//! [`fhe_batch_core::model::prove_bounds`] showed at compile time that the accumulated noise
//! stays below `delta / 2` and the logit fits in `p` signed bits.

use crate::keys::SecretKey;
use crate::params::glwe_noise;
use fhe_batch_core::format::{ChunkShape, ResultHeader, SEED_LEN, read_u64s, write_u64s};
use fhe_batch_core::model::{ClientModel, LinearClient, LinearServer, ServerBody, ServerModel};
use fhe_batch_core::params::{Encryption, ParamSet};
use fhe_batch_core::ports::{ChunkEvaluator, ChunkInput, EvalError};
use tfhe::core_crypto::commons::math::random::RandomGenerator;
use tfhe::core_crypto::prelude::*;

fn delta_shift(plaintext_bits: u8) -> u32 {
    64 - plaintext_bits as u32
}

/// Encrypts up to N quantized records (row-major, `records x n_features`) into one chunk
/// payload: the 128-bit compression seed, then the ciphertext bodies.
///
/// The masks are expanded from a fresh public 128-bit seed ([`crate::mask`], AES-128-CTR as
/// in tfhe's CSPRNG), exactly as the server re-expands them. The noise is tfhe's TUniform,
/// drawn by tfhe's generator from a second seed; both seeds mix tfhe's seeder with the
/// operating system's generator ([`crate::seed`]). The mask-key product is an
/// exact FFT product ([`crate::negacyclic`]).
pub fn encrypt_chunk(key: &SecretKey, model: &ClientModel, quantized: &[u64]) -> Vec<u8> {
    let shape = ChunkShape {
        input_columns: model.input_columns() as u32,
        records_per_chunk: key.params().polynomial_size() as u32,
        encryption: Encryption::SecretKey,
    };
    encrypt_columns(key, shape, model.column_bits(), quantized)
}

/// Encrypts up to `shape.records_per_chunk` records (row-major, `records x input_columns`
/// values, each encoded at `2^(64 - column_bits)`) into one chunk payload: the seed, then the
/// first `records_per_chunk` body coefficients of each column's GLWE (the others hold no
/// record and are not sent).
pub fn encrypt_columns(
    key: &SecretKey,
    shape: ChunkShape,
    column_bits: u8,
    quantized: &[u64],
) -> Vec<u8> {
    assert_eq!(
        shape.encryption,
        Encryption::SecretKey,
        "a secret-key shape"
    );
    let params = key.params();
    let n = params.polynomial_size();
    let glwe_len = (params.glwe_dimension() + 1) * n;
    let f = shape.input_columns as usize;
    let slots = shape.records_per_chunk as usize;
    let plaintext_bits = column_bits;
    assert!(quantized.len().is_multiple_of(f), "whole records");
    let records = quantized.len() / f;
    assert!(
        slots <= n && records > 0 && records <= slots,
        "1..=slots records per chunk"
    );
    let shift = delta_shift(plaintext_bits);
    let mut seeder = crate::seed::MixedSeeder::new();
    let mask_seed = seeder.seed().0;
    let noise_seed = seeder.seed();
    assert_ne!(
        mask_seed, noise_seed.0,
        "the mask and noise seeds must differ"
    );
    let mut masks = vec![0u64; f * glwe_len];
    expand_seeded(mask_seed, n, glwe_len, &mut masks);
    let mut bodies = vec![0u64; f * n];
    RandomGenerator::<DefaultRandomGenerator>::new(noise_seed)
        .unsigned_integer_slice_wrapping_add_random_from_distribution_assign(
            &mut bodies,
            glwe_noise(params),
        );
    for (j, (body, glwe)) in bodies
        .chunks_exact_mut(n)
        .zip(masks.chunks_exact(glwe_len))
        .enumerate()
    {
        for (i, record) in quantized.chunks_exact(f).enumerate() {
            body[i] = body[i].wrapping_add(record[j] << shift);
        }
        key.mask_product(body, &glwe[..glwe_len - n], false);
    }
    let mut out = Vec::with_capacity(shape.payload_len(params) as usize);
    out.extend_from_slice(&mask_seed.to_le_bytes());
    for body in bodies.chunks_exact(n) {
        write_u64s(&body[..slots], &mut out);
    }
    out
}

/// The server's evaluator: no key at all, only the model's integer weights.
#[derive(Debug, Default, Clone, Copy)]
pub struct GlweEvaluator;

impl GlweEvaluator {
    /// Expands a chunk payload into one GLWE ciphertext per column (`input_columns x (k+1)
    /// x N` words), record `i` of every column in coefficient `i`:
    /// - secret key: masks from the seed; body coefficients past `records_per_chunk` are zero;
    /// - public key: column `j` is its GLWE times `X^-(j mod g) records_per_chunk` (a negacyclic
    ///   rotation, exact: it moves the column's records to coefficients `0..` and decrypts
    ///   under the same key with the same noise); the other coefficients hold other columns
    ///   and are never read.
    pub(crate) fn expand(
        params: ParamSet,
        shape: ChunkShape,
        payload: &[u8],
    ) -> Result<Vec<u64>, EvalError> {
        let n_features = shape.input_columns as usize;
        let slots = shape.records_per_chunk as usize;
        let expected = shape.payload_len(params) as usize;
        if payload.len() != expected {
            return Err(EvalError(format!(
                "payload is {} bytes, expected {expected}",
                payload.len()
            )));
        }
        if shape.encryption == Encryption::PublicKey {
            return Ok(Self::expand_public(params, shape, payload));
        }
        let seed = u128::from_le_bytes(payload[..SEED_LEN].try_into().expect("16 bytes"));
        let n = params.polynomial_size();
        let glwe_len = (params.glwe_dimension() + 1) * n;
        let mut full = vec![0u64; n_features * glwe_len];
        expand_seeded(seed, n, glwe_len, &mut full);
        for (glwe, body) in full
            .chunks_exact_mut(glwe_len)
            .zip(payload[SEED_LEN..].chunks_exact(slots * 8))
        {
            read_u64s(body, &mut glwe[glwe_len - n..glwe_len - n + slots]);
        }
        Ok(full)
    }
}

impl GlweEvaluator {
    fn expand_public(params: ParamSet, shape: ChunkShape, payload: &[u8]) -> Vec<u64> {
        let n = params.polynomial_size();
        let glwe_len = (params.glwe_dimension() + 1) * n;
        let g = shape.columns_per_glwe(params) as usize;
        let slots = shape.records_per_chunk as usize;
        let mut carriers = vec![0u64; payload.len() / 8];
        read_u64s(payload, &mut carriers);
        let mut full = vec![0u64; shape.input_columns as usize * glwe_len];
        for (j, column) in full.chunks_exact_mut(glwe_len).enumerate() {
            let carrier = &carriers[(j / g) * glwe_len..(j / g + 1) * glwe_len];
            let d = (j % g) * slots;
            for (out, poly) in column.chunks_exact_mut(n).zip(carrier.chunks_exact(n)) {
                rotate_down(poly, d, out);
            }
        }
        full
    }
}

/// `out = poly * X^-d` in `Z_{2^64}[X]/(X^N + 1)`, `0 <= d < N`: coefficient `i + d` moves to
/// `i`, and those that wrap past `X^N` change sign.
fn rotate_down(poly: &[u64], d: usize, out: &mut [u64]) {
    let n = poly.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = if i + d < n {
            poly[i + d]
        } else {
            poly[i + d - n].wrapping_neg()
        };
    }
}

/// Fills the mask part of each GLWE ciphertext in `out` (`count x glwe_len` words) from the
/// seed; bodies are left as they are.
fn expand_seeded(seed: u128, n: usize, glwe_len: usize, out: &mut [u64]) {
    let mask_len = glwe_len - n;
    let mut stream = crate::mask::MaskStream::new(seed);
    for glwe in out.chunks_exact_mut(glwe_len) {
        stream.fill(&mut glwe[..mask_len]);
    }
}

impl ChunkEvaluator for GlweEvaluator {
    fn evaluate(&self, model: &ServerModel, chunk: &ChunkInput<'_>) -> Result<Vec<u8>, EvalError> {
        let ServerBody::Linear(linear) = &model.body else {
            return Err(EvalError(format!(
                "{} models need the bootstrapping evaluator (FheEvaluator)",
                model.family()
            )));
        };
        Self::evaluate_linear(model.params, linear, chunk)
    }
}

impl GlweEvaluator {
    /// `W x + b` on a chunk's columns: plaintext-scalar multiply-adds, no key.
    pub fn evaluate_linear(
        params: ParamSet,
        model: &LinearServer,
        chunk: &ChunkInput<'_>,
    ) -> Result<Vec<u8>, EvalError> {
        let f = model.n_features as usize;
        let glwe_len = (params.glwe_dimension() + 1) * params.polynomial_size();
        let n = params.polynomial_size();
        let cts = Self::expand(params, chunk.shape(model.n_features), chunk.payload)?;
        let shift = delta_shift(model.output_bits);
        let outputs = model.n_outputs as usize;
        let mut acc = vec![0u64; outputs * glwe_len];
        // Feature-major: each input ciphertext is read once and feeds every output.
        for (j, ct) in cts.chunks_exact(glwe_len).enumerate() {
            for (c, out) in acc.chunks_exact_mut(glwe_len).enumerate() {
                let w = model.weights[c * f + j] as u64;
                if w == 0 {
                    continue;
                }
                for (o, &x) in out.iter_mut().zip(ct) {
                    *o = o.wrapping_add(w.wrapping_mul(x));
                }
            }
        }
        // Bias: a plaintext added to every body coefficient.
        for (c, out) in acc.chunks_exact_mut(glwe_len).enumerate() {
            let b = (model.bias[c] as u64).wrapping_shl(shift);
            for o in &mut out[glwe_len - n..] {
                *o = o.wrapping_add(b);
            }
        }
        let mut bytes = Vec::with_capacity(acc.len() * 8);
        write_u64s(&acc, &mut bytes);
        Ok(bytes)
    }
}

/// Why a result cannot be decrypted.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    #[error(transparent)]
    Format(#[from] fhe_batch_core::format::FormatError),
    #[error(
        "result was computed for key {found}, but the key given is {expected}: use the key that encrypted the batch"
    )]
    WrongKey {
        expected: fhe_batch_core::ids::KeyFingerprint,
        found: fhe_batch_core::ids::KeyFingerprint,
    },
    #[error("result was computed by model {found}, not {expected}")]
    WrongModel {
        expected: fhe_batch_core::ids::ModelId,
        found: fhe_batch_core::ids::ModelId,
    },
    #[error("result does not match the model: {0}")]
    Mismatch(String),
}

/// Parses a result file and checks it was computed for this key and model.
pub(crate) fn open_result<'a>(
    key: &SecretKey,
    model_id: &fhe_batch_core::ids::ModelId,
    bytes: &'a [u8],
) -> Result<(ResultHeader, &'a [u8]), DecryptError> {
    let (header, body) = ResultHeader::decode(bytes, fhe_batch_core::model::MAX_OUTPUTS as u32)?;
    if header.key_fingerprint != key.fingerprint() {
        return Err(DecryptError::WrongKey {
            expected: key.fingerprint(),
            found: header.key_fingerprint,
        });
    }
    if header.model_id != *model_id {
        return Err(DecryptError::WrongModel {
            expected: *model_id,
            found: header.model_id,
        });
    }
    Ok((header, body))
}

/// Decrypts one chunk result of a linear model into its records' integer outputs
/// (`records x n_outputs`).
pub fn decrypt_linear_result(
    key: &SecretKey,
    model: &LinearClient,
    model_id: &fhe_batch_core::ids::ModelId,
    bytes: &[u8],
) -> Result<(ResultHeader, Vec<i64>), DecryptError> {
    let (header, body) = open_result(key, model_id, bytes)?;
    if header.params != key.params()
        || header.ciphertexts != model.n_outputs
        || header.output_bits != model.output_bits
    {
        return Err(DecryptError::Mismatch(format!(
            "{} outputs at {} bits with {}; model has {} outputs at {} bits",
            header.ciphertexts,
            header.output_bits,
            header.params,
            model.n_outputs,
            model.output_bits
        )));
    }
    let params = header.params;
    let n = params.polynomial_size();
    let outputs = header.ciphertexts as usize;
    let glwe_len = (params.glwe_dimension() + 1) * n;
    let mut words = vec![0u64; body.len() / 8];
    read_u64s(body, &mut words);
    // Phase = body - <mask, key>, per output.
    let mut plain = vec![0u64; outputs * n];
    for (phase, glwe) in plain.chunks_exact_mut(n).zip(words.chunks_exact(glwe_len)) {
        phase.copy_from_slice(&glwe[glwe_len - n..]);
        key.mask_product(phase, &glwe[..glwe_len - n], true);
    }
    let p = header.output_bits as u32;
    let shift = 64 - p;
    let half = 1u64 << (shift - 1);
    let records = header.records as usize;
    let mut logits = vec![0i64; records * outputs];
    for c in 0..outputs {
        for i in 0..records {
            // Round to the nearest multiple of delta, then sign-extend the p-bit message.
            let m = plain[c * n + i].wrapping_add(half) >> shift;
            logits[i * outputs + c] = ((m << shift) as i64) >> shift;
        }
    }
    Ok((header, logits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::decrypt_result;
    use crate::params::{glwe_size, polynomial_size};
    use fhe_batch_core::ids::{KeyFingerprint, ModelId};
    use fhe_batch_core::model::{
        ClientBody, CompileReport, LinearTask, ModelPackage, Quantizer, linear::prove_bounds,
    };
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use std::sync::OnceLock;

    fn full(payload: &[u8], records: usize) -> ChunkInput<'_> {
        ChunkInput {
            payload,
            records: records as u32,
            records_per_chunk: 2048,
            eval_key: None,
            encryption: Encryption::SecretKey,
        }
    }

    fn key() -> &'static SecretKey {
        static KEY: OnceLock<SecretKey> = OnceLock::new();
        KEY.get_or_init(|| SecretKey::generate(ParamSet::Glwe2048TUniform17))
    }

    fn package(f: usize, c: usize, bits: u8, seed: u64) -> ModelPackage {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let wmax = (1i64 << (bits - 1)) - 1;
        let weights: Vec<i64> = (0..f * c).map(|_| rng.gen_range(-wmax..=wmax)).collect();
        let bmax = wmax * ((1i64 << bits) - 1) * f as i64 / 4 + 1;
        let bias: Vec<i64> = (0..c).map(|_| rng.gen_range(-bmax..=bmax)).collect();
        let params = ParamSet::Glwe2048TUniform17;
        let bounds = prove_bounds(params, f, bits, &weights, &bias).unwrap();
        let task = if c == 1 {
            LinearTask::BinaryLogistic
        } else {
            LinearTask::MultinomialLogistic
        };
        let classes = match task {
            LinearTask::BinaryLogistic => vec!["no".into(), "yes".into()],
            _ => (0..c).map(|i| format!("c{i}")).collect(),
        };
        let server = ServerModel::new(
            params,
            ServerBody::Linear(LinearServer {
                n_features: f as u32,
                n_outputs: c as u32,
                input_bits: bits,
                output_bits: bounds.output_bits,
                weights,
                bias,
            }),
        );
        let client = ClientModel::new(
            params,
            (0..f).map(|j| format!("f{j}")).collect(),
            "label".into(),
            ClientBody::Linear(LinearClient {
                task,
                quantizers: vec![
                    Quantizer {
                        min: 0.0,
                        scale: 1.0
                    };
                    f
                ],
                input_bits: bits,
                output_bits: bounds.output_bits,
                n_outputs: c as u32,
                classes,
                output_scale: 1.0,
            }),
        );
        ModelPackage::build(server, client, CompileReport::default()).unwrap()
    }

    fn round_trip(pkg: &ModelPackage, quantized: &[u64]) -> Vec<i64> {
        let payload = encrypt_chunk(key(), &pkg.client, quantized);
        let records = quantized.len() / pkg.client.n_features();
        let body = GlweEvaluator
            .evaluate(&pkg.server, &full(&payload, records))
            .unwrap();
        let header = ResultHeader {
            params: pkg.server.params,
            ciphertexts: pkg.server.output_ciphertexts(records as u32, 2048),
            chunk_index: 0,
            chunk_count: 1,
            records: records as u32,
            output_bits: pkg.server.output_bits(),
            model_id: pkg.manifest.model_id,
            key_fingerprint: key().fingerprint(),
            first_record: 0,
            binding: None,
        };
        let bytes = header.encode(&body);
        decrypt_result(key(), &pkg.client, &pkg.manifest.model_id, &bytes)
            .unwrap()
            .1
    }

    fn reference(pkg: &ModelPackage, quantized: &[u64]) -> Vec<i64> {
        quantized
            .chunks_exact(pkg.client.n_features())
            .flat_map(|r| pkg.server.eval_plain(r))
            .collect()
    }

    #[test]
    fn extreme_inputs_decrypt_exactly() {
        // All-max and all-zero inputs hit the ends of the proven range.
        for (f, c, bits) in [(4, 3, 8), (256, 16, 8), (30, 1, 2), (64, 10, 5)] {
            let pkg = package(f, c, bits, 7);
            let top = (1u64 << bits) - 1;
            let mut q = vec![top; f * 5];
            q.extend(vec![0u64; f * 5]);
            assert_eq!(
                round_trip(&pkg, &q),
                reference(&pkg, &q),
                "f={f} c={c} bits={bits}"
            );
        }
    }

    /// The column ciphertexts bootstrap: a record's coefficient, sample-extracted from our
    /// seeded GLWE, is an LWE ciphertext under the big key of tfhe's KS-PBS atomic pattern,
    /// and tfhe's shortint server key (keyswitch + programmable bootstrap with the parameter
    /// set's own modulus switch) maps it through a lookup table. This is the path bootstrapped
    /// models (tree ensembles) take. Values are encoded as shortint 2_2 messages (delta 2^59).
    #[test]
    fn our_column_ciphertexts_bootstrap_through_tfhe_shortint() {
        use tfhe::shortint::ciphertext::{Degree, NoiseLevel};
        use tfhe::shortint::{
            AtomicPatternKind, CarryModulus, Ciphertext, MessageModulus, PBSOrder, ServerKey,
        };
        let records = 64;
        let q: Vec<u64> = (0..records as u64).map(|i| i % 4).collect();
        // 2^59: padding bit, 2 carry bits, 2 message bits.
        let shape = ChunkShape {
            input_columns: 1,
            records_per_chunk: 2048,
            encryption: Encryption::SecretKey,
        };
        let payload = encrypt_columns(key(), shape, 5, &q);
        let params = ParamSet::Glwe2048TUniform17;
        let full = GlweEvaluator::expand(params, shape, &payload).unwrap();
        let glwe = GlweCiphertext::from_container(
            full,
            polynomial_size(params),
            CiphertextModulus::new_native(),
        );
        let sk = ServerKey::new(key().shortint());
        let lut = sk.generate_lookup_table(|x| (3 * x + 1) % 4);
        for (i, &m) in q.iter().enumerate() {
            let mut lwe = LweCiphertext::new(0u64, LweSize(2049), CiphertextModulus::new_native());
            extract_lwe_sample_from_glwe_ciphertext(&glwe, &mut lwe, MonomialDegree(i));
            let ct = Ciphertext::new(
                lwe,
                Degree::new(3),
                NoiseLevel::NOMINAL,
                MessageModulus(4),
                CarryModulus(4),
                AtomicPatternKind::Standard(PBSOrder::KeyswitchBootstrap),
            );
            assert_eq!(key().shortint().decrypt(&ct), m, "record {i} before");
            let out = sk.apply_lookup_table(&ct, &lut);
            assert_eq!(
                key().shortint().decrypt(&out),
                (3 * m + 1) % 4,
                "record {i}"
            );
        }
    }

    /// Our encryption is ordinary tfhe GLWE: tfhe's own decryption reads it.
    #[test]
    fn tfhe_decrypts_our_ciphertexts() {
        let pkg = package(3, 2, 8, 3);
        let q: Vec<u64> = (0..2048 * 3).map(|i| (i as u64 * 7) % 256).collect();
        let payload = encrypt_chunk(key(), &pkg.client, &q);
        let params = ParamSet::Glwe2048TUniform17;
        let shape = ChunkShape {
            input_columns: 3,
            records_per_chunk: 2048,
            encryption: Encryption::SecretKey,
        };
        let full = GlweEvaluator::expand(params, shape, &payload).unwrap();
        let list = GlweCiphertextList::from_container(
            full,
            glwe_size(params),
            polynomial_size(params),
            CiphertextModulus::new_native(),
        );
        let mut plain = PlaintextList::new(0u64, PlaintextCount(3 * 2048));
        decrypt_glwe_ciphertext_list(key().glwe(), &list, &mut plain);
        let shift = delta_shift(pkg.client.column_bits());
        for (j, poly) in plain.as_ref().chunks_exact(2048).enumerate() {
            for (i, &v) in poly.iter().enumerate() {
                let m = v.wrapping_add(1 << (shift - 1)) >> shift;
                assert_eq!(m, q[i * 3 + j], "feature {j} record {i}");
            }
        }
    }

    #[test]
    fn full_chunk_decrypts_exactly() {
        let pkg = package(4, 3, 8, 1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let q: Vec<u64> = (0..2048 * 4).map(|_| rng.gen_range(0..256)).collect();
        assert_eq!(round_trip(&pkg, &q), reference(&pkg, &q));
    }

    #[test]
    fn wrong_key_and_model_are_refused() {
        let pkg = package(4, 3, 8, 1);
        let payload = encrypt_chunk(key(), &pkg.client, &[1, 2, 3, 4]);
        let body = GlweEvaluator
            .evaluate(&pkg.server, &full(&payload, 1))
            .unwrap();
        let header = ResultHeader {
            params: pkg.server.params,
            ciphertexts: 3,
            chunk_index: 0,
            chunk_count: 1,
            records: 1,
            output_bits: pkg.server.output_bits(),
            model_id: ModelId::from_bytes([9; 16]),
            key_fingerprint: KeyFingerprint::from_bytes([8; 16]),
            first_record: 0,
            binding: None,
        };
        let bytes = header.encode(&body);
        assert!(matches!(
            decrypt_result(key(), &pkg.client, &pkg.manifest.model_id, &bytes),
            Err(DecryptError::WrongKey { .. })
        ));
        assert!(
            GlweEvaluator
                .evaluate(&pkg.server, &full(&payload[..payload.len() - 8], 1))
                .is_err()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        /// Random models (features up to 256, classes up to 16, n_bits 2..8) and random inputs:
        /// the decrypted logits equal the plaintext integer reference exactly.
        #[test]
        fn decrypts_to_the_reference(
            f in 1usize..=256,
            c in 1usize..=16,
            bits in 2u8..=8,
            records in 1usize..=64,
            seed in any::<u64>(),
        ) {
            let pkg = package(f, c, bits, seed);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
            let q: Vec<u64> = (0..records * f).map(|_| rng.gen_range(0..(1u64 << bits))).collect();
            prop_assert_eq!(round_trip(&pkg, &q), reference(&pkg, &q));
        }
    }
}
