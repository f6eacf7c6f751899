//! Bootstrapping many ciphertexts with one pass over the keys per batch.
//!
//! tfhe's shortint bootstrap handles one ciphertext at a time, and each one streams both keys
//! from memory: the keyswitching key (2,048 x 4 levels x 919 words, 60 MB for our parameters)
//! and the Fourier bootstrapping key (918 GGSW ciphertexts of 64 KB, 60 MB). Neither fits in
//! cache, so every bootstrap waited on 120 MB of memory traffic. Here a batch of ciphertexts is
//! keyswitched key row by key row, each row read once for the whole batch while the batch's
//! outputs stay in cache; then the batch is blind-rotated key element by key element with
//! tfhe's own batched blind rotation (each GGSW read once per batch and applied to every
//! accumulator), and each output is sample-extracted. Every ciphertext sees tfhe's own
//! arithmetic in the same order (its modulus switch configuration, CMux external products,
//! sample extraction), so the outputs are **bit for bit** those of
//! `ServerKey::apply_lookup_table` (tested), and the noise argument of docs/SECURITY.md is
//! unchanged. On the 2-core machine the batched blind rotation made a bootstrap 1.2-1.3x
//! cheaper (docs/BENCHMARKS.md).

use tfhe::core_crypto::algorithms::slice_algorithms::slice_wrapping_sub_scalar_mul_assign;
use tfhe::core_crypto::fft_impl::fft64::crypto::bootstrap::batch_blind_rotate_assign_scratch;
use tfhe::core_crypto::fft_impl::fft64::math::fft::Fft;
use tfhe::core_crypto::prelude::*;
use tfhe::shortint::ServerKey;
use tfhe::shortint::atomic_pattern::AtomicPatternServerKey;
use tfhe::shortint::server_key::{
    LookupTableOwned, ManyLookupTableOwned, ModulusSwitchConfiguration, ShortintBootstrappingKey,
};

/// Ciphertexts keyswitched and blind-rotated together: their keyswitch outputs (919 words
/// each) stay within a core's L2 cache while each key row streams past once, and each GGSW of
/// the bootstrapping key (64 KB) is read once for the batch's accumulators.
const BATCH: usize = 32;

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

/// A modulus-switched ciphertext held in memory: tfhe's batched blind rotation reads the
/// `i`-th mask element of every ciphertext at key element `i` (`mask().nth(i)`), which is one
/// step here and would redo `i` lazy switches on tfhe's lazily switched ciphertext.
struct Switched {
    log_modulus: CiphertextModulusLog,
    body: usize,
    mask: Vec<usize>,
}

impl Switched {
    fn of(lazy: &impl ModulusSwitchedLweCiphertext<usize>) -> Self {
        Switched {
            log_modulus: lazy.log_modulus(),
            body: lazy.body(),
            mask: lazy.mask().collect(),
        }
    }
}

impl ModulusSwitchedLweCiphertext<usize> for Switched {
    fn log_modulus(&self) -> CiphertextModulusLog {
        self.log_modulus
    }
    fn lwe_dimension(&self) -> LweDimension {
        LweDimension(self.mask.len())
    }
    fn body(&self) -> usize {
        self.body
    }
    fn mask(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.mask.iter().copied()
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

/// The keys [`bootstrap_many`] uses, when `server` is tfhe's standard (64-bit keyswitch)
/// atomic pattern with a classic bootstrapping key.
type Keys<'a> = (
    &'a LweKeyswitchKeyOwned<u64>,
    &'a FourierLweBootstrapKeyOwned,
    &'a ModulusSwitchConfiguration<u64>,
);

fn keys_of(server: &ServerKey) -> Option<Keys<'_>> {
    let AtomicPatternServerKey::Standard(ap) = &server.atomic_pattern else {
        return None;
    };
    let ShortintBootstrappingKey::Classic {
        bsk,
        modulus_switch_noise_reduction_key,
    } = &ap.bootstrapping_key
    else {
        return None;
    };
    Some((
        &ap.key_switching_key,
        bsk,
        modulus_switch_noise_reduction_key,
    ))
}

/// Whether [`bootstrap_many`] takes `server`.
pub(crate) fn takes(server: &ServerKey) -> bool {
    keys_of(server).is_some()
}

/// Bootstraps `inputs` (big-key LWE ciphertexts, concatenated), input `k` with
/// `lookups[k]`, on the calling thread: batched keyswitches, tfhe's modulus switch, batched
/// blind rotations and sample extractions. Returns the outputs (big-key LWE ciphertexts; per
/// input, one per degree of its lookup), concatenated.
pub(crate) fn bootstrap_many(server: &ServerKey, inputs: &[u64], lookups: &[Lookup]) -> Vec<u64> {
    let (ksk, bsk, modulus_switch_noise_reduction_key) = keys_of(server)
        .expect("our parameter sets bootstrap with the standard pattern and a classic key");
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
    let batch_cap = BATCH.min(n).max(1);
    buffers.resize(
        batch_blind_rotate_assign_scratch::<u64>(glwe_size, poly, CiphertextCount(batch_cap), fft)
            .unaligned_bytes_required(),
    );
    let log_modulus = poly.to_blind_rotation_input_modulus_log();
    let modulus = CiphertextModulus::new_native();
    let mut switched = vec![0u64; BATCH * small];
    let acc_size = glwe_size.0 * poly.0;
    let mut accs = vec![0u64; batch_cap * acc_size];
    let total: usize = lookups.iter().map(|l| l.degrees.len()).sum();
    let mut outputs = vec![0u64; total * out_size];
    let mut at = 0;
    for (ins, batch) in inputs.chunks(BATCH * input_size).zip(lookups.chunks(BATCH)) {
        let switched = &mut switched[..batch.len() * small];
        keyswitch_batch(ksk, ins, switched);
        let msed: Vec<Switched> = switched
            .chunks_exact(small)
            .map(|s| {
                let lwe = LweCiphertext::from_container(s, modulus);
                Switched::of(
                    &modulus_switch_noise_reduction_key
                        .lwe_ciphertext_modulus_switch::<usize, _>(&lwe, log_modulus),
                )
            })
            .collect();
        let accs = &mut accs[..batch.len() * acc_size];
        for (a, lookup) in accs.chunks_exact_mut(acc_size).zip(batch) {
            a.copy_from_slice(lookup.acc.as_ref());
        }
        let mut list = GlweCiphertextList::from_container(&mut accs[..], glwe_size, poly, modulus);
        // Key element outer, ciphertexts inner: each GGSW of the bootstrapping key is read
        // once per batch instead of once per ciphertext (tfhe's own batched blind rotation;
        // every ciphertext sees the same operations in the same order).
        bsk.as_view()
            .batch_blind_rotate_assign(list.as_mut_view(), &msed, fft, buffers.stack());
        for (acc, lookup) in list.iter().zip(batch) {
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
        let n = super::BATCH + 7;
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
