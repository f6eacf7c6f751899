//! Bootstrapping many ciphertexts with one pass over the keyswitching key.
//!
//! tfhe's shortint bootstrap keyswitches one ciphertext at a time, and every keyswitch reads
//! the whole keyswitching key (2,048 x 4 levels x 919 words, 60 MB for our parameters): at
//! memory bandwidth that is about a sixth of a bootstrap (docs/BENCHMARKS.md). Here a batch
//! of ciphertexts is keyswitched key row by key row, each row read once for the whole batch
//! while the batch's outputs stay in cache; then each is bootstrapped with the same
//! operations as tfhe's shortint (its modulus switch configuration, blind rotation, sample
//! extraction). Every step is tfhe's own arithmetic in the same order, so the outputs are
//! **bit for bit** those of `ServerKey::apply_lookup_table` (tested), and the noise argument
//! of docs/SECURITY.md is unchanged.

use tfhe::core_crypto::algorithms::slice_algorithms::slice_wrapping_sub_scalar_mul_assign;
use tfhe::core_crypto::fft_impl::fft64::math::fft::Fft;
use tfhe::core_crypto::prelude::*;
use tfhe::shortint::ServerKey;
use tfhe::shortint::atomic_pattern::AtomicPatternServerKey;
use tfhe::shortint::server_key::{
    LookupTableOwned, ManyLookupTableOwned, ShortintBootstrappingKey,
};

/// Ciphertexts keyswitched together: their outputs (919 words each) stay within a core's L2
/// cache while each key row streams past once.
const KEYSWITCH_BATCH: usize = 32;

/// Keyswitches `inputs` (big-key LWE ciphertexts of `input_size` words each, concatenated)
/// into `out` (small-key ciphertexts, concatenated), as `keyswitch_lwe_ciphertext` does one at
/// a time.
fn keyswitch_batch(ksk: &LweKeyswitchKeyOwned<u64>, inputs: &[u64], out: &mut [u64]) {
    let input_size = ksk.input_key_lwe_dimension().to_lwe_size().0;
    let small = ksk.output_lwe_size().0;
    let batch = inputs.len() / input_size;
    debug_assert_eq!(out.len(), batch * small);
    out.fill(0);
    for (o, x) in out
        .chunks_exact_mut(small)
        .zip(inputs.chunks_exact(input_size))
    {
        o[small - 1] = x[input_size - 1];
    }
    let decomposer = SignedDecomposer::<u64>::new(
        ksk.decomposition_base_log(),
        ksk.decomposition_level_count(),
    );
    let levels = ksk.decomposition_level_count().0;
    let mut digits = vec![0u64; batch * levels];
    for (i, block) in ksk.iter().enumerate() {
        for (j, d) in digits.chunks_exact_mut(levels).enumerate() {
            for (slot, term) in d
                .iter_mut()
                .zip(decomposer.decompose(inputs[j * input_size + i]))
            {
                *slot = term.value();
            }
        }
        for (l, row) in block.iter().enumerate() {
            let row = row.as_ref();
            for (j, o) in out.chunks_exact_mut(small).enumerate() {
                slice_wrapping_sub_scalar_mul_assign(o, row, digits[j * levels + l]);
            }
        }
    }
}

/// One bootstrap's lookup: the accumulator to rotate, and the monomial degrees its outputs
/// are extracted at (`[0]` for one table; `f * stride` for tfhe's many-LUT functions).
pub(crate) struct Lookup<'a> {
    pub acc: &'a GlweCiphertextOwned<u64>,
    pub degrees: Vec<usize>,
}

impl<'a> Lookup<'a> {
    /// A single lookup table.
    pub fn one(t: &'a LookupTableOwned) -> Self {
        Lookup {
            acc: &t.acc,
            degrees: vec![0],
        }
    }

    /// tfhe's many-LUT: one rotation, one output per function.
    pub fn many(t: &'a ManyLookupTableOwned) -> Self {
        Lookup {
            acc: &t.acc,
            degrees: (0..t.function_count())
                .map(|f| f * t.sample_extraction_stride)
                .collect(),
        }
    }
}

/// Bootstraps `inputs` (big-key LWE ciphertexts, concatenated), input `k` with
/// `lookups[k]`, on the calling thread: batched keyswitches, then tfhe's modulus switch,
/// blind rotation and sample extractions. Returns the outputs (big-key LWE ciphertexts; per
/// input, one per degree of its lookup), concatenated.
pub(crate) fn bootstrap_many(server: &ServerKey, inputs: &[u64], lookups: &[Lookup]) -> Vec<u64> {
    let AtomicPatternServerKey::Standard(ap) = &server.atomic_pattern else {
        unreachable!("our parameter set uses the standard atomic pattern");
    };
    let ShortintBootstrappingKey::Classic {
        bsk,
        modulus_switch_noise_reduction_key,
    } = &ap.bootstrapping_key
    else {
        unreachable!("our parameter set bootstraps with the classic key");
    };
    let ksk = &ap.key_switching_key;
    let input_size = ksk.input_key_lwe_dimension().to_lwe_size().0;
    let small = ksk.output_lwe_size().0;
    let poly = bsk.polynomial_size();
    let glwe_size = bsk.glwe_size();
    let out_size = bsk.output_lwe_dimension().to_lwe_size().0;
    let n = inputs.len() / input_size;
    assert_eq!(lookups.len(), n, "one lookup per input");
    let fft = Fft::new(poly);
    let fft = fft.as_view();
    let mut buffers = ComputationBuffers::new();
    buffers.resize(
        blind_rotate_assign_mem_optimized_requirement::<u64>(glwe_size, poly, fft)
            .unaligned_bytes_required(),
    );
    let log_modulus = poly.to_blind_rotation_input_modulus_log();
    let modulus = CiphertextModulus::new_native();
    let mut switched = vec![0u64; KEYSWITCH_BATCH * small];
    let total: usize = lookups.iter().map(|l| l.degrees.len()).sum();
    let mut outputs = vec![0u64; total * out_size];
    let mut at = 0;
    for (ins, batch) in inputs
        .chunks(KEYSWITCH_BATCH * input_size)
        .zip(lookups.chunks(KEYSWITCH_BATCH))
    {
        let switched = &mut switched[..batch.len() * small];
        keyswitch_batch(ksk, ins, switched);
        for (s, lookup) in switched.chunks_exact(small).zip(batch) {
            let lwe = LweCiphertext::from_container(s, modulus);
            let msed =
                modulus_switch_noise_reduction_key.lwe_ciphertext_modulus_switch(&lwe, log_modulus);
            let mut acc = lookup.acc.clone();
            blind_rotate_assign_mem_optimized(&msed, &mut acc, bsk, fft, buffers.stack());
            for &d in &lookup.degrees {
                let mut out =
                    LweCiphertext::from_container(&mut outputs[at..at + out_size], modulus);
                extract_lwe_sample_from_glwe_ciphertext(&acc, &mut out, MonomialDegree(d));
                at += out_size;
            }
        }
    }
    outputs
}

#[cfg(test)]
mod tests {
    use crate::SecretKey;
    use fhe_batch_core::params::ParamSet;
    use tfhe::core_crypto::prelude::*;
    use tfhe::shortint::ServerKey;

    /// The batched path gives tfhe's own bootstrap outputs bit for bit, over more inputs than
    /// one batch, with a different table per input.
    #[test]
    fn batched_bootstraps_equal_tfhes_bit_for_bit() {
        let key = SecretKey::generate(ParamSet::Glwe2048TUniform17);
        let ck = key.shortint();
        let sk = ServerKey::new(ck);
        let tables: Vec<_> = (0..4u64)
            .map(|a| sk.generate_lookup_table(move |x| (x * 3 + a) % 16))
            .collect();
        let n = super::KEYSWITCH_BATCH + 7;
        let cts: Vec<_> = (0..n).map(|i| ck.encrypt(i as u64 % 4)).collect();
        let table_of: Vec<_> = (0..n).map(|i| &tables[(i * 7) % 4]).collect();
        let inputs: Vec<u64> = cts.iter().flat_map(|c| c.ct.as_ref().to_vec()).collect();
        let lookups: Vec<_> = table_of.iter().map(|t| super::Lookup::one(t)).collect();
        let got = super::bootstrap_many(&sk, &inputs, &lookups);
        let size = got.len() / n;
        for (i, (c, t)) in cts.iter().zip(&table_of).enumerate() {
            let want = sk.apply_lookup_table(c, t);
            assert_eq!(
                &got[i * size..(i + 1) * size],
                want.ct.as_ref(),
                "input {i}"
            );
            let mut decrypted = want.clone();
            decrypted.ct = LweCiphertext::from_container(
                got[i * size..(i + 1) * size].to_vec(),
                want.ct.ciphertext_modulus(),
            );
            assert_eq!(
                ck.decrypt_message_and_carry(&decrypted),
                ((i as u64 % 4) * 3 + ((i * 7) % 4) as u64) % 16
            );
        }
        // tfhe's many-LUT (two functions per bootstrap): the same outputs, in function order.
        let f1 = |x: u64| (x + 1) % 4;
        let f2 = |x: u64| (x * 2) % 4;
        let many = sk.generate_many_lookup_table(&[&f1, &f2]);
        let lookups: Vec<_> = cts.iter().map(|_| super::Lookup::many(&many)).collect();
        let got = super::bootstrap_many(&sk, &inputs, &lookups);
        assert_eq!(got.len(), 2 * n * size);
        for (i, c) in cts.iter().enumerate() {
            for (f, want) in sk.apply_many_lookup_table(c, &many).iter().enumerate() {
                let k = 2 * i + f;
                assert_eq!(
                    &got[k * size..(k + 1) * size],
                    want.ct.as_ref(),
                    "input {i} function {f}"
                );
            }
        }
    }
}
