//! The noise figures a tree-ensemble plan is proven against, tied to the parameter set they come
//! from. Which numbers are tfhe's and which are ours:
//!
//! - tfhe's (1.8.2, re-derived from tfhe's own formulas by a test in `fhe-batch-fhe`): the
//!   variance of a fresh sample, of a bootstrap's output, of the packing keyswitch, and the
//!   input norm the parameter set was analysed for;
//! - ours: [`TAIL_SIGMAS`], the Gaussian tail we demand of every decoded score slot.

use crate::params::ParamSet;

/// Standard deviations between a slot's noise and half a decoding step: a Gaussian tail below
/// 2^-128 (`P(|Z| > 13.2) < 2^-128`). Our choice, not tfhe's.
pub const TAIL_SIGMAS: f64 = 13.2;

/// Noise figures of the bootstrapping parameter set whose GLWE part is a [`ParamSet`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootstrapNoise {
    /// log2 of the variance (on the 2^64 torus) of a fresh GLWE sample.
    pub fresh_variance_log2: f64,
    /// log2 of the variance of a programmable bootstrap's output.
    pub pbs_output_variance_log2: f64,
    /// log2 of the variance the result packing adds to each slot (2,048 ciphertexts packed).
    pub packing_variance_log2: f64,
    /// The largest sum of squared coefficients a bootstrap input may carry, in units of the
    /// bootstrap output variance (the set was analysed for a keyswitch input of this 2-norm^2).
    pub max_input_norm2: f64,
    /// Input values a bootstrap accepts: `u` in `[0, pbs_input_values)`.
    pub pbs_input_values: u32,
    /// log2 of the variance a bootstrap's keyswitch and centred modulus switch add to its
    /// input (on the 2^64 torus), before the blind rotation reads it.
    pub keyswitch_modswitch_variance_log2: f64,
}

impl BootstrapNoise {
    /// The figures for `params`.
    ///
    /// `Glwe2048TUniform17` is the GLWE part of tfhe's `PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128`:
    /// - fresh: TUniform(17), `(2^(2*17+1) + 1) / 6`;
    /// - bootstrap output: `pbs_variance_132_bits_security_tuniform_fft_mul` for n = 918, k = 1,
    ///   N = 2048, base 2^23, 1 level, 53-bit mantissa;
    /// - packing: `packing_keyswitch_additive_variance_132_bits_security_tuniform`, input
    ///   n = 2048, output k = 1, N = 2048, base 2^22, 1 level, 2048 ciphertexts packed;
    /// - inputs: `MaxNoiseLevel(5)` (2-norm 5, p-fail 2^-129.58); 2 message + 2 carry bits;
    /// - keyswitch and modulus switch: `keyswitch_additive_variance_132_bits_security_tuniform`
    ///   (2048 -> 918, base 2^4, 4 levels) plus
    ///   `centered_binary_shifted_modulus_switch_additive_variance` (n = 918, to 2N = 4096).
    pub const fn of(params: ParamSet) -> Self {
        match params {
            ParamSet::Glwe2048TUniform17 => Self {
                fresh_variance_log2: 32.415_037_5,
                pbs_output_variance_log2: 98.346,
                packing_variance_log2: 94.896,
                max_input_norm2: 25.0,
                pbs_input_values: 16,
                keyswitch_modswitch_variance_log2: 108.526,
            },
        }
    }

    /// log2 of the standard deviation of a slot summing `outputs` bootstrap outputs, after
    /// packing.
    pub fn slot_sigma_log2(&self, outputs: usize) -> f64 {
        let v = outputs as f64 * self.pbs_output_variance_log2.exp2()
            + self.packing_variance_log2.exp2();
        v.log2() / 2.0
    }

    /// log2 of the largest noise (TAIL_SIGMAS standard deviations) of a slot summing `outputs`
    /// bootstrap outputs.
    pub fn slot_noise_log2(&self, outputs: usize) -> f64 {
        self.slot_sigma_log2(outputs) + TAIL_SIGMAS.log2()
    }

    /// The widest slot encoding whose decoding stays exact with probability `>= 1 - 2^-128`
    /// when a slot sums `outputs` bootstrap outputs: `TAIL_SIGMAS * sigma < 2^(63 - bits)`.
    pub fn slot_bits_for(&self, outputs: usize) -> u8 {
        (63.0 - self.slot_noise_log2(outputs))
            .floor()
            .clamp(1.0, 62.0) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_widths_follow_the_noise() {
        let noise = BootstrapNoise::of(ParamSet::Glwe2048TUniform17);
        // More summed bootstrap outputs, fewer exact bits.
        assert_eq!(noise.slot_bits_for(7), 8);
        assert_eq!(noise.slot_bits_for(137), 6);
        assert!(noise.slot_bits_for(10_000) < noise.slot_bits_for(100));
    }
}
