//! Tree ensembles on encrypted records: the evaluation key, the server's bootstrapped
//! evaluation of a [`ForestPlan`], and the client's decryption of packed score slots.
//!
//! The client sends one thermometer bit per threshold, in the GLWE columns of
//! [`crate::glwe::encrypt_columns`] at tfhe's shortint encoding (2^59). For every bootstrap of
//! the plan the server forms `u = constant + sum(coefficient * column)` on whole GLWEs (one
//! multiply-add per column serves every record of the chunk), sample-extracts record `i`'s
//! coefficient (an LWE ciphertext under the big key of tfhe's KS-PBS atomic pattern), and
//! applies the plan's lookup tables with tfhe shortint's server key: keyswitch, the parameter
//! set's own centred modulus switch, blind rotation, and one sample extraction per table
//! (tfhe's many-LUT when a bootstrap carries two). The outputs are summed into the record's
//! score slots (no further bootstrap), and all slots of a chunk are packed, `N` per GLWE, with
//! a packing keyswitch to the client's output key. The noise argument is in
//! `docs/SECURITY.md` and [`fhe_batch_core::tree::ForestPlan::validate`].

use crate::batch_ks::Lookup;
use crate::keys::SecretKey;
use crate::params::shortint_params;
use fhe_batch_core::format::{ResultHeader, read_u64s, write_u64s};
use fhe_batch_core::ids::{EvalKeyId, KeyFingerprint, ModelId};
use fhe_batch_core::params::ParamSet;
use fhe_batch_core::ports::EvalError;
use fhe_batch_core::tree::ForestClient;
use fhe_batch_core::tree::ForestPlan;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tfhe::core_crypto::prelude::*;
use tfhe::shortint::ciphertext::{Degree, MaxDegree};
use tfhe::shortint::server_key::{LookupTableOwned, ManyLookupTableOwned};
use tfhe::shortint::{CompressedServerKey, ServerKey};

/// Packing keyswitch: one level of 22 bits (noise in `docs/SECURITY.md`).
pub const PACKING_BASE_LOG: usize = 22;
pub const PACKING_LEVEL: usize = 1;
/// Encoding step of a bootstrap input (shortint 2+2 bits with padding).
pub const INPUT_SHIFT: u32 = 59;

/// Why an evaluation key is refused.
#[derive(Debug, thiserror::Error)]
pub enum EvalKeyError {
    #[error("evaluation key content does not match its id {0}")]
    Id(EvalKeyId),
    #[error("evaluation key cannot be read: {0}")]
    Decode(String),
}

/// The evaluation key a data owner uploads once: tfhe's compressed shortint server key
/// (keyswitching and bootstrapping keys) and the seeded packing keyswitch key to the output
/// key. Public: it lets the server compute, not decrypt.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct EvalKey {
    server: CompressedServerKey,
    packing: SeededLwePackingKeyswitchKeyOwned<u64>,
    /// Fingerprint of the secret key it was generated from: a worker refuses to evaluate a
    /// batch encrypted under another key with it (the results would decrypt to garbage).
    owner: u128,
}

impl tfhe::named::Named for EvalKey {
    const NAME: &'static str = "fhe_batch::EvalKey";
}

type VersionedParts<'a> = (
    <CompressedServerKey as tfhe::Versionize>::Versioned<'a>,
    <SeededLwePackingKeyswitchKeyOwned<u64> as tfhe::Versionize>::Versioned<'a>,
    u128,
);

impl tfhe::Versionize for EvalKey {
    type Versioned<'vers> = VersionedParts<'vers>;
    fn versionize(&self) -> Self::Versioned<'_> {
        (
            self.server.versionize(),
            self.packing.versionize(),
            self.owner,
        )
    }
}

impl tfhe_versionable::VersionizeOwned for EvalKey {
    type VersionedOwned = (
        <CompressedServerKey as tfhe_versionable::VersionizeOwned>::VersionedOwned,
        <SeededLwePackingKeyswitchKeyOwned<u64> as tfhe_versionable::VersionizeOwned>::VersionedOwned,
        u128,
    );
    fn versionize_owned(self) -> Self::VersionedOwned {
        (
            self.server.versionize_owned(),
            self.packing.versionize_owned(),
            self.owner,
        )
    }
}

impl tfhe::Unversionize for EvalKey {
    fn unversionize(v: Self::VersionedOwned) -> Result<Self, tfhe_versionable::UnversionizeError> {
        Ok(Self {
            server: CompressedServerKey::unversionize(v.0)?,
            packing: SeededLwePackingKeyswitchKeyOwned::unversionize(v.1)?,
            owner: v.2,
        })
    }
}

impl tfhe::conformance::ParameterSetConformant for EvalKey {
    type ParameterSet = ParamSet;
    fn is_conformant(&self, p: &ParamSet) -> bool {
        let sp = shortint_params(*p);
        let server_params = (
            sp.into(),
            MaxDegree::from_msg_carry_modulus(sp.message_modulus, sp.carry_modulus),
        );
        let packing_params = LwePackingKeyswitchKeyConformanceParams {
            decomp_base_log: DecompositionBaseLog(PACKING_BASE_LOG),
            decomp_level_count: DecompositionLevelCount(PACKING_LEVEL),
            input_lwe_dimension: LweDimension(p.glwe_dimension() * p.polynomial_size()),
            output_glwe_size: GlweSize(p.glwe_dimension() + 1),
            output_polynomial_size: PolynomialSize(p.polynomial_size()),
            ciphertext_modulus: CiphertextModulus::new_native(),
        };
        self.server.is_conformant(&server_params) && self.packing.is_conformant(&packing_params)
    }
}

/// The content address of an evaluation key file.
pub fn eval_key_id(bytes: &[u8]) -> EvalKeyId {
    let d = Sha256::digest(bytes);
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    EvalKeyId::from_bytes(id)
}

impl EvalKey {
    /// Generates the evaluation key of `key` (client side; about a second).
    pub fn generate(key: &SecretKey) -> Self {
        crate::seed::reseed_thread_engine();
        let server = CompressedServerKey::new(key.shortint());
        let mut seeder = crate::seed::MixedSeeder::new();
        let packing = allocate_and_generate_new_seeded_lwe_packing_keyswitch_key(
            &key.big_lwe(),
            key.output_glwe(),
            DecompositionBaseLog(PACKING_BASE_LOG),
            DecompositionLevelCount(PACKING_LEVEL),
            crate::params::glwe_noise(key.params()),
            CiphertextModulus::new_native(),
            &mut seeder,
        );
        Self {
            server,
            packing,
            owner: u128::from_le_bytes(*key.fingerprint().as_bytes()),
        }
    }

    /// Assembles a key from its parts (tests build non-conformant ones with it).
    pub fn from_parts(
        server: CompressedServerKey,
        packing: SeededLwePackingKeyswitchKeyOwned<u64>,
        owner: KeyFingerprint,
    ) -> Self {
        Self {
            server,
            packing,
            owner: u128::from_le_bytes(*owner.as_bytes()),
        }
    }

    /// The fingerprint of the secret key this evaluation key belongs to.
    pub fn owner(&self) -> KeyFingerprint {
        KeyFingerprint::from_bytes(self.owner.to_le_bytes())
    }

    /// The parts, for inspection.
    pub fn parts(
        &self,
    ) -> (
        &CompressedServerKey,
        &SeededLwePackingKeyswitchKeyOwned<u64>,
    ) {
        (&self.server, &self.packing)
    }

    /// tfhe's safe serialization (versioned, named, size-limited).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        tfhe::safe_serialization::safe_serialize(
            self,
            &mut out,
            fhe_batch_core::ports::MAX_EVAL_KEY_BYTES,
        )
        .expect("evaluation key serializes within the limit");
        out
    }

    /// Reads an uploaded key: its content must hash to `id`, and tfhe's safe deserialization
    /// checks the size limit, type name, version and conformance to `params`.
    pub fn from_bytes(
        id: &EvalKeyId,
        bytes: &[u8],
        params: ParamSet,
    ) -> Result<Self, EvalKeyError> {
        if eval_key_id(bytes) != *id {
            return Err(EvalKeyError::Id(*id));
        }
        tfhe::safe_serialization::safe_deserialize_conformant::<Self>(
            bytes,
            fhe_batch_core::ports::MAX_EVAL_KEY_BYTES,
            &params,
        )
        .map_err(EvalKeyError::Decode)
    }

    /// Expands the key for evaluation (decompression of both parts).
    pub fn prepare(self) -> PreparedEvalKey {
        PreparedEvalKey {
            owner: self.owner(),
            server: self.server.decompress(),
            packing: self.packing.decompress_into_lwe_packing_keyswitch_key(),
        }
    }
}

/// An evaluation key ready to use: expanded in memory (about 190 MB).
pub struct PreparedEvalKey {
    pub(crate) server: ServerKey,
    packing: LwePackingKeyswitchKeyOwned<u64>,
    owner: KeyFingerprint,
}

/// The lookup tables of one bootstrap, as tfhe accumulators.
enum Tables {
    One(LookupTableOwned),
    Many(ManyLookupTableOwned),
}

/// Fills a bootstrap accumulator: `values[j]` is the encoded output for input box `j` (16
/// boxes of N/16 coefficients, the input `u` at step 2^59 selects box `u`); the first half box
/// is negated and rotated to the end so that inputs just below 0 still land in box 0 (tfhe's
/// own construction for the negacyclic blind rotation).
fn accumulator(n: usize, values: &[u64; 16]) -> GlweCiphertextOwned<u64> {
    let mut acc = GlweCiphertext::new(
        0u64,
        GlweSize(2),
        PolynomialSize(n),
        CiphertextModulus::new_native(),
    );
    let box_size = n / 16;
    {
        let mut body = acc.get_mut_body();
        let b = body.as_mut();
        for (j, chunk) in b.chunks_exact_mut(box_size).enumerate() {
            chunk.fill(values[j]);
        }
        for v in &mut b[..box_size / 2] {
            *v = v.wrapping_neg();
        }
        b.rotate_left(box_size / 2);
    }
    acc
}

fn tables_of(plan: &ForestPlan, program: usize, n: usize) -> Tables {
    let p = &plan.programs[program];
    let step = 64 - plan.slot_bits as u32;
    let enc = |v: u64| v.wrapping_shl(step);
    let mut values = [0u64; 16];
    let width = 16 / plan.functions as usize;
    for (f, lut) in p.luts.iter().enumerate() {
        for (u, &v) in lut.table.iter().enumerate() {
            values[f * width + u] = enc(v);
        }
    }
    let acc = accumulator(n, &values);
    if plan.functions == 1 {
        Tables::One(LookupTableOwned {
            acc,
            degree: Degree::new(15),
        })
    } else {
        Tables::Many(ManyLookupTableOwned {
            acc,
            input_max_degree: MaxDegree::new(width as u64 - 1),
            sample_extraction_stride: n / plan.functions as usize,
            per_function_output_degree: vec![Degree::new(width as u64 - 1); p.luts.len()],
        })
    }
}

impl PreparedEvalKey {
    pub fn owner(&self) -> KeyFingerprint {
        self.owner
    }

    /// Evaluates `plan` on one chunk of expanded column GLWEs (`n_bits x (k+1) x N` words,
    /// record `i` in coefficient `i`), returning the packed result body.
    pub fn evaluate(
        &self,
        params: ParamSet,
        plan: &ForestPlan,
        columns: &[u64],
        records: usize,
    ) -> Result<Vec<u8>, EvalError> {
        let n = params.polynomial_size();
        let glwe_len = (params.glwe_dimension() + 1) * n;
        if columns.len() != plan.thermometer_bits as usize * glwe_len || records == 0 || records > n
        {
            return Err(EvalError(format!(
                "{} column words for {} bits and {records} records",
                columns.len(),
                plan.thermometer_bits
            )));
        }
        // u of every bootstrap, on whole GLWEs: sum(c * column) + constant * 2^59.
        let inputs: Vec<Vec<u64>> = plan
            .programs
            .par_iter()
            .map(|p| {
                let mut acc = vec![0u64; glwe_len];
                for &(bit, c) in &p.terms {
                    let col = &columns[bit as usize * glwe_len..(bit as usize + 1) * glwe_len];
                    let c = c as i64 as u64;
                    for (a, &x) in acc.iter_mut().zip(col) {
                        *a = a.wrapping_add(c.wrapping_mul(x));
                    }
                }
                let k = (p.constant as i64 as u64).wrapping_shl(INPUT_SHIFT);
                for a in &mut acc[glwe_len - n..] {
                    *a = a.wrapping_add(k);
                }
                acc
            })
            .collect();
        let tables: Vec<Tables> = (0..plan.programs.len())
            .map(|i| tables_of(plan, i, n))
            .collect();
        let lookups: Vec<Lookup> = tables
            .iter()
            .map(|t| match t {
                Tables::One(t) => Lookup::one(t),
                Tables::Many(t) => Lookup::many(t),
            })
            .collect();
        let slots = plan.score_slots as usize;
        let lwe_size = LweSize(glwe_len - n + 1);
        // Per record: every bootstrap, outputs summed into the record's slots.
        let per_record: Vec<Vec<u64>> = (0..records)
            .into_par_iter()
            .map(|i| {
                let mut sums = vec![0u64; slots * lwe_size.0];
                let mut lwe = LweCiphertext::new(0u64, lwe_size, CiphertextModulus::new_native());
                // The record's bootstraps together: keyswitched and blind-rotated in batches,
                // one pass over each key per batch (crate::batch_ks).
                let mut lwes = Vec::with_capacity(plan.programs.len() * lwe_size.0);
                for input in &inputs {
                    let glwe = GlweCiphertext::from_container(
                        input.as_slice(),
                        PolynomialSize(n),
                        CiphertextModulus::new_native(),
                    );
                    extract_lwe_sample_from_glwe_ciphertext(&glwe, &mut lwe, MonomialDegree(i));
                    lwes.extend_from_slice(lwe.as_ref());
                }
                let outs = crate::batch_ks::bootstrap_many(&self.server, &lwes, &lookups);
                let mut outs = outs.chunks_exact(lwe_size.0);
                for (p, lookup) in plan.programs.iter().zip(&lookups) {
                    // One output per table (tables_of builds one function per lut).
                    debug_assert_eq!(p.luts.len(), lookup.degrees.len());
                    for (lut, out) in p.luts.iter().zip(outs.by_ref().take(lookup.degrees.len())) {
                        let s = lut.slot as usize;
                        for (a, &x) in sums[s * lwe_size.0..(s + 1) * lwe_size.0]
                            .iter_mut()
                            .zip(out)
                        {
                            *a = a.wrapping_add(x);
                        }
                    }
                }
                sums
            })
            .collect();
        // Pack slot (record i, slot s) at position i * slots + s, N per GLWE.
        let all: Vec<u64> = per_record.into_iter().flatten().collect();
        let bytes = self.pack(n, lwe_size, &all);
        debug_assert_eq!(bytes.len(), (records * slots).div_ceil(n) * glwe_len * 8);
        Ok(bytes)
    }

    /// Packs LWE ciphertexts under the big key (`lwe_size` words each, in result order), `n`
    /// per GLWE, with the packing keyswitch to the client's output key; returns the result
    /// body.
    pub(crate) fn pack(&self, n: usize, lwe_size: LweSize, all: &[u64]) -> Vec<u8> {
        let glwes: Vec<Vec<u64>> = all
            .chunks(n * lwe_size.0)
            .map(|part| {
                let list = LweCiphertextList::from_container(
                    part,
                    lwe_size,
                    CiphertextModulus::new_native(),
                );
                let mut out = GlweCiphertext::new(
                    0u64,
                    GlweSize(2),
                    PolynomialSize(n),
                    CiphertextModulus::new_native(),
                );
                par_keyswitch_lwe_ciphertext_list_and_pack_in_glwe_ciphertext(
                    &self.packing,
                    &list,
                    &mut out,
                );
                out.into_container()
            })
            .collect();
        let mut bytes = Vec::with_capacity(glwes.iter().map(Vec::len).sum::<usize>() * 8);
        for g in &glwes {
            write_u64s(g, &mut bytes);
        }
        bytes
    }
}

/// Opens a result of packed values (`per_record` values of `output_bits` bits per record, `N`
/// per GLWE under the output key): checks it was computed for this key and model and has the
/// shape the model says, and returns its header and the phases (body minus mask-key product) of
/// its values, in record order.
pub(crate) fn open_packed_result(
    key: &SecretKey,
    model_id: &ModelId,
    bytes: &[u8],
    per_record: usize,
    output_bits: u8,
) -> Result<(ResultHeader, Vec<u64>), crate::glwe::DecryptError> {
    let (header, body) = crate::glwe::open_result(key, model_id, bytes)?;
    let params = header.params;
    let n = params.polynomial_size();
    let records = header.records as usize;
    let count = records * per_record;
    let glwes = count.div_ceil(n);
    if params != key.params()
        || header.ciphertexts as usize != glwes
        || header.output_bits != output_bits
    {
        return Err(crate::glwe::DecryptError::Mismatch(format!(
            "{} ciphertexts at {} bits for {records} records; the model needs {glwes} at {output_bits} bits",
            header.ciphertexts, header.output_bits
        )));
    }
    let mut words = vec![0u64; body.len() / 8];
    read_u64s(body, &mut words);
    let list = GlweCiphertextList::from_container(
        words,
        GlweSize(params.glwe_dimension() + 1),
        PolynomialSize(n),
        CiphertextModulus::new_native(),
    );
    debug_assert_eq!(
        list.as_ref().len(),
        glwes * (params.glwe_dimension() + 1) * n
    );
    let mut plain = PlaintextList::new(0u64, PlaintextCount(glwes * n));
    decrypt_glwe_ciphertext_list(key.output_glwe(), &list, &mut plain);
    let mut phases = plain.into_container();
    phases.truncate(count);
    Ok((header, phases))
}

/// Decrypts one chunk result of a tree ensemble into its records' integer scores
/// (`records x outputs`), through the model's slot readout.
pub fn decrypt_forest_result(
    key: &SecretKey,
    forest: &ForestClient,
    model_id: &ModelId,
    bytes: &[u8],
) -> Result<(ResultHeader, Vec<i64>), crate::glwe::DecryptError> {
    let slots = forest.score_slots as usize;
    let (header, phases) = open_packed_result(key, model_id, bytes, slots, forest.slot_bits)?;
    let shift = 64 - header.output_bits as u32;
    let mask = (1u64 << header.output_bits) - 1;
    let sums: Vec<u64> = phases
        .into_iter()
        .map(|v| (v.wrapping_add(1u64 << (shift - 1)) >> shift) & mask)
        .collect();
    let scores = sums
        .chunks_exact(slots)
        .flat_map(|s| forest.slots.scores(s))
        .collect();
    Ok((header, scores))
}
