//! Neural networks on encrypted records: the server's bootstrapped evaluation of an
//! [`MlpServer`] and the client's decryption of its packed scores.
//!
//! Per chunk, the first layer is computed on whole GLWE columns (`constant + sum(w * column)`,
//! one multiply-add per weight for every record of the chunk). Per record, each hidden neuron
//! is sample-extracted (layer 1) or formed from the previous layer's bootstrap outputs
//! (`constant + sum(w * h)` on LWE ciphertexts), then bootstrapped with its lookup table by
//! tfhe shortint's server key (keyswitch, the parameter set's centred modulus switch, blind
//! rotation). The scores are integer combinations of the last layer's outputs, packed `N`
//! per GLWE with the packing keyswitch to the client's output key. What the proof guarantees
//! is in [`fhe_batch_core::mlp`] and `docs/SECURITY.md`.

use crate::batch_ks::{Lookup, bootstrap_many};
use crate::forest::{PreparedEvalKey, open_packed_result};
use crate::keys::SecretKey;
use fhe_batch_core::format::ResultHeader;
use fhe_batch_core::ids::ModelId;
use fhe_batch_core::mlp::{MlpClient, MlpServer, Neuron, decode_score};
use fhe_batch_core::params::ParamSet;
use fhe_batch_core::ports::EvalError;
use rayon::prelude::*;
use tfhe::core_crypto::prelude::*;
use tfhe::shortint::ciphertext::Degree;
use tfhe::shortint::server_key::LookupTableOwned;

/// A neuron's lookup table as a tfhe accumulator: the table is the body (position `p < N`
/// reads `table[p]`, the negacyclic rotation gives `-table[p - N]` above).
fn accumulator(table: &[i64]) -> LookupTableOwned {
    let n = table.len();
    let mut acc = GlweCiphertext::new(
        0u64,
        GlweSize(2),
        PolynomialSize(n),
        CiphertextModulus::new_native(),
    );
    for (a, &v) in acc.get_mut_body().as_mut().iter_mut().zip(table) {
        *a = v as u64;
    }
    LookupTableOwned {
        acc,
        degree: Degree::new(15),
    }
}

/// `constant + sum(w * x)` over LWE ciphertexts (`lwe_size` words each, concatenated).
fn combine(neuron: &Neuron, inputs: &[u64], lwe_size: usize, out: &mut [u64]) {
    out.fill(0);
    for (&w, x) in neuron.weights.iter().zip(inputs.chunks_exact(lwe_size)) {
        if w == 0 {
            continue;
        }
        let w = w as u64;
        for (o, &v) in out.iter_mut().zip(x) {
            *o = o.wrapping_add(w.wrapping_mul(v));
        }
    }
    let body = out.last_mut().expect("an LWE has a body");
    *body = body.wrapping_add(neuron.constant as u64);
}

impl PreparedEvalKey {
    /// Evaluates `model` on one chunk of expanded column GLWEs (`input_columns x (k+1) x N`
    /// words, record `i` in coefficient `i`), returning the packed result body.
    pub fn evaluate_mlp(
        &self,
        params: ParamSet,
        model: &MlpServer,
        columns: &[u64],
        records: usize,
    ) -> Result<Vec<u8>, EvalError> {
        let n = params.polynomial_size();
        let glwe_len = (params.glwe_dimension() + 1) * n;
        let cols = model.input_columns as usize;
        if columns.len() != cols * glwe_len || records == 0 || records > n {
            return Err(EvalError(format!(
                "{} column words for {cols} columns and {records} records",
                columns.len()
            )));
        }
        let first = &model.hidden[0];
        // Layer 1 on whole GLWEs, column by column into groups of neurons (each group's
        // accumulators stay in cache while every column streams past once).
        let mut accs = vec![0u64; first.neurons.len() * glwe_len];
        accs.par_chunks_mut(16 * glwe_len)
            .zip(first.neurons.par_chunks(16))
            .for_each(|(acc, neurons)| {
                for (j, col) in columns.chunks_exact(glwe_len).enumerate() {
                    for (a, neuron) in acc.chunks_exact_mut(glwe_len).zip(neurons) {
                        let w = neuron.weights[j];
                        if w == 0 {
                            continue;
                        }
                        let w = w as u64;
                        for (o, &x) in a.iter_mut().zip(col) {
                            *o = o.wrapping_add(w.wrapping_mul(x));
                        }
                    }
                }
                for (a, neuron) in acc.chunks_exact_mut(glwe_len).zip(neurons) {
                    for o in &mut a[glwe_len - n..] {
                        *o = o.wrapping_add(neuron.constant as u64);
                    }
                }
            });
        let tables: Vec<Vec<LookupTableOwned>> = model
            .hidden
            .iter()
            .map(|l| l.tables.iter().map(|t| accumulator(t)).collect())
            .collect();
        let lookups: Vec<Vec<Lookup>> = tables
            .iter()
            .map(|l| l.iter().map(Lookup::one).collect())
            .collect();
        let lwe_size = LweSize(glwe_len - n + 1);
        let scores = model.output.len();
        let per_record: Vec<Vec<u64>> = (0..records)
            .into_par_iter()
            .map(|i| {
                // Each layer's neurons are bootstrapped together: one pass over the
                // keyswitching and bootstrapping keys per batch of neurons, not one per neuron.
                let mut lwe = LweCiphertext::new(0u64, lwe_size, CiphertextModulus::new_native());
                let mut inputs = Vec::with_capacity(first.neurons.len() * lwe_size.0);
                for acc in accs.chunks_exact(glwe_len) {
                    let glwe = GlweCiphertext::from_container(
                        acc,
                        PolynomialSize(n),
                        CiphertextModulus::new_native(),
                    );
                    extract_lwe_sample_from_glwe_ciphertext(&glwe, &mut lwe, MonomialDegree(i));
                    inputs.extend_from_slice(lwe.as_ref());
                }
                let mut h = bootstrap_many(&self.server, &inputs, &lookups[0]);
                for (layer, lookups) in model.hidden.iter().zip(&lookups).skip(1) {
                    inputs.clear();
                    for neuron in &layer.neurons {
                        combine(neuron, &h, lwe_size.0, lwe.as_mut());
                        inputs.extend_from_slice(lwe.as_ref());
                    }
                    h = bootstrap_many(&self.server, &inputs, lookups);
                }
                let mut out = vec![0u64; scores * lwe_size.0];
                for (neuron, o) in model.output.iter().zip(out.chunks_exact_mut(lwe_size.0)) {
                    combine(neuron, &h, lwe_size.0, o);
                }
                out
            })
            .collect();
        let all: Vec<u64> = per_record.into_iter().flatten().collect();
        Ok(self.pack(n, lwe_size, &all))
    }
}

/// Decrypts one chunk result of a network into its records' integer scores
/// (`records x n_scores`).
pub fn decrypt_mlp_result(
    key: &SecretKey,
    model: &MlpClient,
    model_id: &ModelId,
    bytes: &[u8],
) -> Result<(ResultHeader, Vec<i64>), crate::glwe::DecryptError> {
    let (header, phases) = open_packed_result(
        key,
        model_id,
        bytes,
        model.n_scores as usize,
        model.output_bits,
    )?;
    let values = phases
        .into_iter()
        .map(|v| decode_score(v, header.output_bits))
        .collect();
    Ok((header, values))
}
