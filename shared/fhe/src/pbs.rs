//! Programmable bootstrapping with tfhe's shortint server key on our parameter set: key
//! generation, key sizes and throughput, measured (the cost model of bootstrapped models such
//! as tree ensembles rests on these numbers).

use crate::SecretKey;
use rayon::prelude::*;
use std::time::{Duration, Instant};
use tfhe::shortint::{CompressedServerKey, ServerKey};

/// What one measurement found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PbsFigures {
    pub bootstraps: usize,
    pub keygen_s: f64,
    /// bincode size of the compressed server key (what a client would upload once).
    pub compressed_key_bytes: usize,
    /// bincode size of the expanded server key (what a worker holds in memory).
    pub server_key_bytes: usize,
    pub decompress_s: f64,
    /// One thread.
    pub single_thread_per_s: f64,
    /// All cores (rayon).
    pub parallel_per_s: f64,
    pub threads: usize,
    /// Every bootstrap decrypted to its lookup table's value.
    pub all_correct: bool,
}

/// Generates a server key from `key`'s shortint client key and runs `n` bootstraps of a
/// lookup table (x -> x + 1 mod 4) on one thread, then `n` across all cores, decrypting each.
pub fn measure(key: &SecretKey, n: usize) -> PbsFigures {
    let ck = key.shortint();
    let t = Instant::now();
    let compressed = CompressedServerKey::new(ck);
    let keygen = t.elapsed();
    let compressed_key_bytes = bincode::serialized_size(&compressed).unwrap_or(0) as usize;
    let t = Instant::now();
    let sk: ServerKey = compressed.decompress();
    let decompress = t.elapsed();
    let server_key_bytes = bincode::serialized_size(&sk).unwrap_or(0) as usize;
    let lut = sk.generate_lookup_table(|x| (x + 1) % 4);
    let inputs: Vec<_> = (0..n).map(|i| ck.encrypt((i % 4) as u64)).collect();
    let per_s = |d: Duration| n as f64 / d.as_secs_f64().max(f64::MIN_POSITIVE);

    let t = Instant::now();
    let single: Vec<_> = inputs
        .iter()
        .map(|c| sk.apply_lookup_table(c, &lut))
        .collect();
    let single_time = t.elapsed();
    let t = Instant::now();
    let parallel: Vec<_> = inputs
        .par_iter()
        .map(|c| sk.apply_lookup_table(c, &lut))
        .collect();
    let parallel_time = t.elapsed();
    let all_correct = single
        .iter()
        .chain(&parallel)
        .enumerate()
        .all(|(i, c)| ck.decrypt(c) == ((i % n) as u64 % 4 + 1) % 4);
    PbsFigures {
        bootstraps: n,
        keygen_s: keygen.as_secs_f64(),
        compressed_key_bytes,
        server_key_bytes,
        decompress_s: decompress.as_secs_f64(),
        single_thread_per_s: per_s(single_time),
        parallel_per_s: per_s(parallel_time),
        threads: rayon::current_num_threads(),
        all_correct,
    }
}

/// Bootstrapping speed of one of tfhe's audited parameter sets, measured with its own keys.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CandidateFigures {
    pub name: &'static str,
    /// `(k, N)`: the GLWE dimension and polynomial size; a bootstrap reads its input at `2N`
    /// positions of the torus.
    pub glwe_dimension: usize,
    pub polynomial_size: usize,
    pub lwe_dimension: usize,
    pub bootstraps: usize,
    pub single_thread_ms: f64,
    pub parallel_ms: f64,
    /// The keyswitch alone (big LWE to small, one thread), the first step of each bootstrap;
    /// `None` for the 32-bit-keyswitch pattern, whose key is not a 64-bit one.
    pub keyswitch_ms: Option<f64>,
    /// Our worker's path (`crate::batch_ks`: keyswitches and blind rotations in batches of
    /// 32), all cores, ms per bootstrap; `None` for sets it does not take (KS32, multi-bit).
    pub batched_parallel_ms: Option<f64>,
    pub all_correct: bool,
}

/// One thread's time per keyswitch of `inputs` with a standard atomic pattern's key.
fn keyswitch_ms(sk: &ServerKey, inputs: &[tfhe::shortint::Ciphertext]) -> Option<f64> {
    use tfhe::core_crypto::prelude::{LweCiphertext, keyswitch_lwe_ciphertext};
    use tfhe::shortint::atomic_pattern::AtomicPatternServerKey;
    let AtomicPatternServerKey::Standard(ap) = &sk.atomic_pattern else {
        return None;
    };
    let ksk = &ap.key_switching_key;
    let mut out = LweCiphertext::new(0u64, ksk.output_lwe_size(), ksk.ciphertext_modulus());
    let t = Instant::now();
    for c in inputs {
        keyswitch_lwe_ciphertext(ksk, &c.ct, &mut out);
    }
    Some(t.elapsed().as_secs_f64() * 1e3 / inputs.len().max(1) as f64)
}

/// All cores through [`crate::batch_ks::bootstrap_many`], `inputs` split in one share per
/// thread: ms per bootstrap and whether every output decrypts to `lut`'s value.
fn batched_ms(
    ck: &tfhe::shortint::ClientKey,
    sk: &ServerKey,
    inputs: &[tfhe::shortint::Ciphertext],
    lut: &tfhe::shortint::server_key::LookupTableOwned,
    want: impl Fn(usize) -> u64 + Sync,
) -> Option<(f64, bool)> {
    if !crate::batch_ks::takes(sk) {
        return None;
    }
    let share = inputs.len().div_ceil(rayon::current_num_threads()).max(1);
    let t = Instant::now();
    let outs: Vec<Vec<u64>> = inputs
        .par_chunks(share)
        .map(|part| {
            let words: Vec<u64> = part.iter().flat_map(|c| c.ct.as_ref().to_vec()).collect();
            let lookups: Vec<_> = part
                .iter()
                .map(|_| crate::batch_ks::Lookup::one(lut))
                .collect();
            crate::batch_ks::bootstrap_many(sk, &words, &lookups)
        })
        .collect();
    let ms = t.elapsed().as_secs_f64() * 1e3 / inputs.len().max(1) as f64;
    let size = inputs.first()?.ct.lwe_size().0;
    let right = outs
        .iter()
        .flat_map(|o| o.chunks_exact(size))
        .zip(inputs)
        .enumerate()
        .all(|(i, (words, c))| {
            let mut out = c.clone();
            out.ct = tfhe::core_crypto::prelude::LweCiphertext::from_container(
                words.to_vec(),
                c.ct.ciphertext_modulus(),
            );
            out.degree = lut.degree;
            ck.decrypt(&out) == want(i)
        });
    Some((ms, right))
}

fn candidate<P>(name: &'static str, p: P, n: usize) -> CandidateFigures
where
    P: Into<tfhe::shortint::parameters::AtomicPatternParameters> + Copy,
{
    use tfhe::shortint::ClientKey;
    let ap: tfhe::shortint::parameters::AtomicPatternParameters = p.into();
    let ck = ClientKey::new(p);
    let sk = ServerKey::new(&ck);
    let m = ap.message_modulus().0;
    let lut = sk.generate_lookup_table(|x| (x + 1) % m);
    let inputs: Vec<_> = (0..n).map(|i| ck.encrypt(i as u64 % m)).collect();
    let single_n = (n / 4).max(1);
    let t = Instant::now();
    let single: Vec<_> = inputs[..single_n]
        .iter()
        .map(|c| sk.apply_lookup_table(c, &lut))
        .collect();
    let single_ms = t.elapsed().as_secs_f64() * 1e3 / single_n as f64;
    let t = Instant::now();
    let parallel: Vec<_> = inputs
        .par_iter()
        .map(|c| sk.apply_lookup_table(c, &lut))
        .collect();
    let parallel_ms = t.elapsed().as_secs_f64() * 1e3 / n as f64;
    let right =
        |(i, c): (usize, &tfhe::shortint::Ciphertext)| ck.decrypt(c) == (i as u64 % m + 1) % m;
    let batched = batched_ms(&ck, &sk, &inputs, &lut, |i| (i as u64 % m + 1) % m);
    let all_correct = single.iter().enumerate().all(right)
        && parallel.iter().enumerate().all(right)
        && batched.is_none_or(|b| b.1);
    CandidateFigures {
        name,
        glwe_dimension: ap.glwe_dimension().0,
        polynomial_size: ap.polynomial_size().0,
        lwe_dimension: ap.lwe_dimension().0,
        bootstraps: n,
        single_thread_ms: single_ms,
        parallel_ms,
        keyswitch_ms: keyswitch_ms(&sk, &inputs[..single_n]),
        batched_parallel_ms: batched.map(|b| b.0),
        all_correct,
    }
}

/// The candidates for a cheaper bootstrap than ours (issue 12: the cheapest audited set that
/// holds a plan's precision), each with fresh keys of its own: tfhe 1.8's 2_2 set (ours), its
/// 32-bit-keyswitch variant, the 1_1 set (N = 512, k = 4: 1,024 positions instead of 4,096)
/// and the multi-bit 2_2 sets (groups of 2, 3, 4), all at p_fail <= 2^-128.
pub fn measure_candidates(n: usize) -> Vec<CandidateFigures> {
    use tfhe::shortint::parameters::v1_8::*;
    vec![
        candidate(
            "2_2 KS_PBS TUNIFORM (ours)",
            V1_8_PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
            n,
        ),
        candidate(
            "2_2 KS32_PBS TUNIFORM",
            V1_8_PARAM_MESSAGE_2_CARRY_2_KS32_PBS_TUNIFORM_2M128,
            n,
        ),
        candidate(
            "1_1 KS_PBS TUNIFORM",
            V1_8_PARAM_MESSAGE_1_CARRY_1_KS_PBS_TUNIFORM_2M128,
            n,
        ),
        candidate(
            "2_2 multi-bit group 2",
            V1_8_PARAM_MULTI_BIT_GROUP_2_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
            n,
        ),
        candidate(
            "2_2 multi-bit group 3",
            V1_8_PARAM_MULTI_BIT_GROUP_3_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
            n,
        ),
        candidate(
            "2_2 multi-bit group 4",
            V1_8_PARAM_MULTI_BIT_GROUP_4_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
            n,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhe_batch_core::params::ParamSet;

    #[test]
    fn bootstraps_on_our_parameters_are_correct() {
        let key = SecretKey::generate(ParamSet::Glwe2048TUniform17);
        // FHE_BATCH_PBS_N=200 turns this into a quick measurement (`-- --nocapture`).
        let n = std::env::var("FHE_BATCH_PBS_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8);
        let f = measure(&key, n);
        eprintln!("{f:?}");
        assert!(f.all_correct, "{f:?}");
        assert!(f.compressed_key_bytes > 1 << 20 && f.server_key_bytes > f.compressed_key_bytes);
    }
}
