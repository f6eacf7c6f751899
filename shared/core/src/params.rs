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

    /// Bytes of one full GLWE ciphertext (mask and body).
    pub const fn glwe_bytes(self) -> usize {
        (self.glwe_dimension() + 1) * self.polynomial_size() * 8
    }
}

impl std::fmt::Display for ParamSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
