//! Seeds for every random choice the client makes (secret key, evaluation key, encryption masks
//! and noise): tfhe's seeder, which on most x86 machines is the CPU's RDSEED alone, mixed with
//! the operating system's generator (`getrandom`), so a weak or backdoored source on either
//! side is not enough to predict a seed: `seed = SHA-256("fhe-batch seed v1" || tfhe || os)[..16]`.

use sha2::{Digest, Sha256};
use tfhe::core_crypto::commons::math::random::Seed;
use tfhe::core_crypto::prelude::*;
use tfhe::shortint::engine::ShortintEngine;

/// A seeder mixing tfhe's with the operating system's generator.
pub struct MixedSeeder {
    inner: Box<dyn Seeder>,
}

impl MixedSeeder {
    pub fn new() -> Self {
        Self {
            inner: new_seeder(),
        }
    }
}

impl Default for MixedSeeder {
    fn default() -> Self {
        Self::new()
    }
}

impl Seeder for MixedSeeder {
    fn seed(&mut self) -> Seed {
        let mut os = [0u8; 32];
        getrandom::fill(&mut os).expect("the operating system's random generator is available");
        let mut h = Sha256::new();
        h.update(b"fhe-batch seed v1");
        h.update(self.inner.seed().0.to_le_bytes());
        h.update(os);
        let d = h.finalize();
        Seed(u128::from_le_bytes(d[..16].try_into().expect("16 bytes")))
    }

    fn is_available() -> bool {
        true
    }
}

/// Replaces this thread's tfhe shortint engine (whose generators key generation draws from)
/// with one seeded by a [`MixedSeeder`].
pub fn reseed_thread_engine() {
    let engine = ShortintEngine::new_from_seeder(&mut MixedSeeder::new());
    ShortintEngine::with_thread_local_mut(|e| *e = engine);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_fresh() {
        let mut s = MixedSeeder::new();
        let seeds: Vec<u128> = (0..64).map(|_| s.seed().0).collect();
        let mut unique = seeds.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), seeds.len());
        assert_ne!(MixedSeeder::new().seed().0, MixedSeeder::new().seed().0);
    }
}
