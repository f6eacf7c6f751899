//! Mapping of the allow-listed [`ParamSet`]s onto tfhe's own parameter sets.

use fhe_batch_core::params::ParamSet;
use tfhe::core_crypto::prelude::*;
use tfhe::shortint::parameters::ClassicPBSParameters;

/// tfhe's shortint parameter set behind a [`ParamSet`]; our GLWE uses its GLWE part.
pub fn shortint_params(p: ParamSet) -> ClassicPBSParameters {
    match p {
        ParamSet::Glwe2048TUniform17 => {
            tfhe::shortint::parameters::PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128
        }
    }
}

/// GLWE noise distribution of a parameter set (tfhe's TUniform).
pub fn glwe_noise(p: ParamSet) -> DynamicDistribution<u64> {
    shortint_params(p).glwe_noise_distribution
}

pub fn glwe_size(p: ParamSet) -> GlweSize {
    GlweSize(p.glwe_dimension() + 1)
}

pub fn polynomial_size(p: ParamSet) -> PolynomialSize {
    PolynomialSize(p.polynomial_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain numbers in `fhe-batch-core` (used for the compile-time noise proof) must be
    /// exactly tfhe's.
    #[test]
    fn core_numbers_match_tfhe() {
        for p in ParamSet::ALL {
            let t = shortint_params(p);
            assert_eq!(t.polynomial_size.0, p.polynomial_size());
            assert_eq!(t.glwe_dimension.0, p.glwe_dimension());
            assert_eq!(
                t.glwe_noise_distribution,
                DynamicDistribution::new_t_uniform(p.noise_bound_log2())
            );
            assert!(t.ciphertext_modulus.is_native_modulus());
            assert!(t.log2_p_fail <= -128.0);
        }
    }
}
