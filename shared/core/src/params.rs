//! The cryptographic parameter sets the service accepts, as plain numbers.
//!
//! The numbers are those of tfhe's own parameter sets (checked against `tfhe` itself in the
//! `fhe-batch-fhe` crate's tests), so this crate can reason about noise without linking tfhe.

use serde::{Deserialize, Serialize};

/// Allow-listed parameter sets. The server refuses every other id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ParamSet {
    /// GLWE part of tfhe 1.8's `PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128`:
    /// GLWE dimension 1, polynomial size 2048, TUniform noise with bound 2^17, native 2^64
    /// modulus. tfhe's own analysis puts it at 128-bit security.
    #[serde(rename = "glwe-2048-tuniform17-v1")]
    Glwe2048TUniform17,
}

impl ParamSet {
    pub const ALL: [ParamSet; 1] = [ParamSet::Glwe2048TUniform17];

    /// Stable numeric id used in binary headers.
    pub const fn wire_id(self) -> u16 {
        match self {
            ParamSet::Glwe2048TUniform17 => 1,
        }
    }

    pub fn from_wire_id(id: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.wire_id() == id)
    }

    pub const fn name(self) -> &'static str {
        match self {
            ParamSet::Glwe2048TUniform17 => "glwe-2048-tuniform17-v1",
        }
    }

    /// Polynomial size N: records packed per ciphertext.
    pub const fn polynomial_size(self) -> usize {
        match self {
            ParamSet::Glwe2048TUniform17 => 2048,
        }
    }

    /// GLWE dimension k.
    pub const fn glwe_dimension(self) -> usize {
        match self {
            ParamSet::Glwe2048TUniform17 => 1,
        }
    }

    /// log2 of the TUniform noise bound: every fresh noise sample e has |e| <= 2^bound_log2.
    pub const fn noise_bound_log2(self) -> u32 {
        match self {
            ParamSet::Glwe2048TUniform17 => 17,
        }
    }

    /// Bytes of one seeded (compressed) GLWE ciphertext as we ship it: the N body coefficients.
    pub const fn seeded_glwe_bytes(self) -> usize {
        self.polynomial_size() * 8
    }

    /// Columns of a public-key chunk that share one GLWE: `N / records_per_chunk`, at least 1.
    pub fn columns_per_glwe(self, records_per_chunk: u32) -> u32 {
        (self.polynomial_size() as u32 / records_per_chunk.max(1)).max(1)
    }

    /// Bytes of one full GLWE ciphertext (mask and body).
    pub const fn glwe_bytes(self) -> usize {
        (self.glwe_dimension() + 1) * self.polynomial_size() * 8
    }
}

/// How a batch's records were encrypted. Both kinds decrypt under the same secret key; they
/// differ in who can produce them, in size and in fresh noise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    /// With the secret key: masks regenerated from a 128-bit seed, so only the bodies travel
    /// (8 bytes per value). Only the key holder can produce such a batch.
    #[default]
    SecretKey,
    /// With the owner's public key (RLWE public-key encryption, tfhe's compact-PKE numbers):
    /// anyone holding the public key can produce it, nobody but the key holder can read it.
    /// Each GLWE travels whole (mask and N bodies); when a chunk holds fewer than N records,
    /// `N / records_per_chunk` columns share one GLWE.
    PublicKey,
}

impl Encryption {
    /// Stable numeric id used in binary headers.
    pub const fn wire_id(self) -> u16 {
        match self {
            Encryption::SecretKey => 1,
            Encryption::PublicKey => 2,
        }
    }

    pub fn from_wire_id(id: u16) -> Option<Self> {
        [Encryption::SecretKey, Encryption::PublicKey]
            .into_iter()
            .find(|e| e.wire_id() == id)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Encryption::SecretKey => "secret-key",
            Encryption::PublicKey => "public-key",
        }
    }

    /// log2 of the largest absolute noise a fresh coefficient can carry (a deterministic bound).
    ///
    /// - secret key: one TUniform sample, `|e| <= 2^b`;
    /// - public key: `e·r + e2 - e1·s` with the public key's noise `e`, the encryption's fresh
    ///   noise `e1` (k polynomials) and `e2`, all TUniform `|.| <= 2^b`, and binary `r`, `s`:
    ///   each product coefficient is a signed sum of at most N samples, so the whole is at most
    ///   `(N (k + 1) + 1) 2^b`.
    pub fn noise_bound_log2(self, params: ParamSet) -> f64 {
        let b = params.noise_bound_log2() as f64;
        match self {
            Encryption::SecretKey => b,
            Encryption::PublicKey => b + (self.noise_terms(params) as f64).log2(),
        }
    }

    /// Fresh samples (each `|.| <= 2^b`) a coefficient's noise is a signed sum of, at most.
    pub fn noise_terms(self, params: ParamSet) -> u64 {
        match self {
            Encryption::SecretKey => 1,
            Encryption::PublicKey => {
                (params.polynomial_size() * (params.glwe_dimension() + 1) + 1) as u64
            }
        }
    }

    /// log2 of the noise variance the bootstrapping proofs assume for a fresh coefficient
    /// (they bound tails from variances, as tfhe's own noise analysis does).
    ///
    /// - secret key: the TUniform variance `sigma^2 = (2^(2b+1) + 1) / 6`;
    /// - public key: `(N/2 + kN + 1) sigma^2`, the variance of `E·r + e2 - e1·S` over the key
    ///   generation's and the encryption's randomness, as tfhe computes it for its compact
    ///   public-key encryption: each of the N terms `E_j r_j` has variance `sigma^2 / 2` (`E_j`
    ///   zero-mean TUniform, `r_j` uniform binary, independent), each of the at most `kN`
    ///   terms `e1_j S_j` at most `sigma^2` whatever the secret key, and `e2` adds `sigma^2`.
    ///   For N = 2048, k = 1: 3,073 sigma^2, 2^44.0.
    pub fn fresh_variance_log2(self, params: ParamSet) -> f64 {
        let b = params.noise_bound_log2() as f64;
        let tuniform = ((2.0 * b + 1.0).exp2() + 1.0) / 6.0;
        let n = params.polynomial_size() as f64;
        let k = params.glwe_dimension() as f64;
        match self {
            Encryption::SecretKey => tuniform.log2(),
            Encryption::PublicKey => ((n / 2.0 + k * n + 1.0) * tuniform).log2(),
        }
    }
}

impl std::fmt::Display for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for ParamSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_noise_of_each_encryption() {
        let p = ParamSet::Glwe2048TUniform17;
        // The secret-key variance is the one the bootstrapping analysis was written with.
        let analysed = crate::tree::BootstrapNoise::of(p).fresh_variance_log2;
        assert!((Encryption::SecretKey.fresh_variance_log2(p) - analysed).abs() < 1e-6);
        assert_eq!(Encryption::SecretKey.noise_bound_log2(p), 17.0);
        // Public key: (2 x 2048 + 1) samples of 2^17.
        assert_eq!(Encryption::PublicKey.noise_terms(p), 4097);
        let b = Encryption::PublicKey.noise_bound_log2(p);
        assert!(
            (b - (17.0 + 4097f64.log2())).abs() < 1e-12 && b < 29.001,
            "{b}"
        );
        let v = Encryption::PublicKey.fresh_variance_log2(p);
        assert!((v - (analysed + 3073f64.log2())).abs() < 1e-9, "{v}");
        for e in [Encryption::SecretKey, Encryption::PublicKey] {
            assert_eq!(Encryption::from_wire_id(e.wire_id()), Some(e));
        }
        assert_eq!(Encryption::from_wire_id(0), None);
    }
}
