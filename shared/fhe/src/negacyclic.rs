//! Exact negacyclic products `a(X) * s(X) mod (X^N + 1)` over Z/2^64 for a binary secret `s`,
//! by a double-precision FFT.
//!
//! tfhe's generic polynomial product (Karatsuba) is exact but costs ~0.7 ms at N = 2048, and
//! client-side encryption and decryption need one product per ciphertext. Here `a` is split
//! into three limbs of at most 22 bits; each limb times the binary key has coefficients of
//! magnitude at most `2^22 * N = 2^33`, which an f64 FFT of size N/2 computes with an error
//! far below 1/2, so rounding recovers every limb product exactly; the limbs are then
//! recombined modulo 2^64. The tests compare against tfhe's product bit for bit.
//!
//! Method: a real polynomial mod X^N + 1 is determined by its values at the odd powers of
//! `psi = exp(i*pi/N)`; values at conjugate points are conjugate, so the N/2 points
//! `psi^(4k+1)` suffice. With `u_j = (a_j + i*a_(j+N/2)) * psi^j`, those values are the
//! size-N/2 DFT of `u` (positive exponent). Products are pointwise; the inverse DFT, the
//! inverse twist and a division by N/2 give `c_j + i*c_(j+N/2)`.
//!
//! Error bound: each limb product's exact coefficients are integers of magnitude at most
//! `2^22 * N = 2^33`. A double-precision FFT product of size n = N/2 = 1024 has an absolute
//! error of at most about `||a||_2 ||s||_2 * c * log2(n) * 2^-53` per coefficient, with
//! `||a||_2 <= 2^22 * sqrt(N)`, `||s||_2 <= sqrt(N)` and a small constant c: `2^33 * 10 * c *
//! 2^-53 ~ 2^-16.7 c`, some 15 bits below the 1/2 at which rounding would pick the wrong
//! integer. [`BinaryPolyMultiplier::mul_acc`] checks the margin at run time: every rounded
//! value must lie within 1/4 of its integer and within the largest exact magnitude
//! `(2^22 - 1) N`, else it panics ("FFT rounding margin lost") instead of returning a wrong
//! product.

use rustfft::num_complex::Complex64;
use rustfft::{Fft, FftPlanner};
use std::sync::Arc;

const LIMB_BITS: u32 = 22;
const LIMBS: u32 = 3;
const LIMB_MASK: u64 = (1 << LIMB_BITS) - 1;

/// Multiplies polynomials by one fixed binary polynomial (a secret key polynomial).
pub struct BinaryPolyMultiplier {
    half: usize,
    evaluate: Arc<dyn Fft<f64>>,
    interpolate: Arc<dyn Fft<f64>>,
    twist: Vec<Complex64>,
    untwist: Vec<Complex64>,
    key_values: Vec<Complex64>,
}

impl BinaryPolyMultiplier {
    /// Overwrites the key's FFT image with zeros (when the secret key is dropped).
    pub fn zeroize_key(&mut self) {
        use zeroize::Zeroize;
        for c in &mut self.key_values {
            c.re.zeroize();
            c.im.zeroize();
        }
    }

    /// Prepares products by `key`, whose coefficients must all be 0 or 1.
    pub fn new(key: &[u64]) -> Self {
        let n = key.len();
        assert!(n.is_power_of_two() && n >= 4, "polynomial size");
        assert!(key.iter().all(|&b| b <= 1), "binary key");
        let half = n / 2;
        let mut planner = FftPlanner::<f64>::new();
        let evaluate = planner.plan_fft_inverse(half);
        let interpolate = planner.plan_fft_forward(half);
        let angle = std::f64::consts::PI / n as f64;
        let twist: Vec<Complex64> = (0..half)
            .map(|j| Complex64::from_polar(1.0, angle * j as f64))
            .collect();
        let untwist: Vec<Complex64> = (0..half)
            .map(|j| Complex64::from_polar(1.0 / half as f64, -angle * j as f64))
            .collect();
        let mut m = Self {
            half,
            evaluate,
            interpolate,
            twist,
            untwist,
            key_values: vec![Complex64::default(); half],
        };
        m.set_key(key);
        m
    }

    /// Multiplies by another binary polynomial of the same size from now on, keeping the FFT
    /// plans and twist tables (a public-key encryption multiplies by a fresh `r` per GLWE).
    pub fn set_key(&mut self, key: &[u64]) {
        assert_eq!(key.len(), 2 * self.half, "polynomial size");
        assert!(key.iter().all(|&b| b <= 1), "binary key");
        let mut values = std::mem::take(&mut self.key_values);
        self.values_of(|j| key[j] as f64, &mut values);
        self.key_values = values;
    }

    fn values_of(&self, coeff: impl Fn(usize) -> f64, out: &mut [Complex64]) {
        let h = self.half;
        for (j, o) in out.iter_mut().enumerate() {
            *o = Complex64::new(coeff(j), coeff(j + h)) * self.twist[j];
        }
        self.evaluate.process(out);
    }

    /// `acc += a * key` (or `acc -= a * key` when `subtract`), coefficient-wise mod 2^64.
    pub fn mul_acc(&self, acc: &mut [u64], a: &[u64], subtract: bool) {
        let h = self.half;
        assert_eq!(a.len(), 2 * h, "polynomial size");
        assert_eq!(acc.len(), 2 * h, "polynomial size");
        let mut buf = vec![Complex64::default(); h];
        // The run-time guard: every value within 1/4 of its rounded integer, and within the
        // largest magnitude an exact limb product can have (past 2^53 every f64 is an integer,
        // so the first check alone could not see a lost margin there). A NaN fails both.
        let mut within = true;
        let largest = (LIMB_MASK * 2 * h as u64) as f64 + 0.25;
        for limb in 0..LIMBS {
            let shift = limb * LIMB_BITS;
            self.values_of(|j| ((a[j] >> shift) & LIMB_MASK) as f64, &mut buf);
            for (v, k) in buf.iter_mut().zip(&self.key_values) {
                *v *= k;
            }
            self.interpolate.process(&mut buf);
            for (j, v) in buf.iter().enumerate() {
                let v = v * self.untwist[j];
                let (re, im) = (v.re.round(), v.im.round());
                within &= (v.re - re).abs() < 0.25
                    && (v.im - im).abs() < 0.25
                    && v.re.abs() <= largest
                    && v.im.abs() <= largest;
                let lo = (re as i64 as u64).wrapping_shl(shift);
                let hi = (im as i64 as u64).wrapping_shl(shift);
                if subtract {
                    acc[j] = acc[j].wrapping_sub(lo);
                    acc[j + h] = acc[j + h].wrapping_sub(hi);
                } else {
                    acc[j] = acc[j].wrapping_add(lo);
                    acc[j + h] = acc[j + h].wrapping_add(hi);
                }
            }
        }
        assert!(
            within,
            "FFT rounding margin lost: a negacyclic product would be wrong (see the error bound in fhe_batch_fhe::negacyclic)"
        );
    }

    /// A multiplier by any integer polynomial, unchecked: only for testing the guard.
    #[cfg(test)]
    fn unchecked(key: &[i64]) -> Self {
        let mut m = Self::new(&vec![0; key.len()]);
        let mut values = vec![Complex64::default(); m.half];
        m.values_of(|j| key[j] as f64, &mut values);
        m.key_values = values;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use tfhe::core_crypto::algorithms::polynomial_algorithms::polynomial_wrapping_add_mul_assign;
    use tfhe::core_crypto::prelude::*;

    fn tfhe_product(a: &[u64], s: &[u64]) -> Vec<u64> {
        let mut out = Polynomial::new(0u64, PolynomialSize(a.len()));
        polynomial_wrapping_add_mul_assign(
            &mut out,
            &Polynomial::from_container(a),
            &Polynomial::from_container(s),
        );
        out.into_container()
    }

    /// The guard fails loudly when the products leave f64's exact range (a key of 2^40
    /// coefficients: limb products near 2^73).
    #[test]
    #[should_panic(expected = "FFT rounding margin lost")]
    fn the_rounding_guard_fires_when_the_margin_is_lost() {
        let n = 2048;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let key: Vec<i64> = (0..n).map(|_| rng.gen_range(0..1i64 << 40)).collect();
        let a: Vec<u64> = (0..n).map(|_| rng.r#gen()).collect();
        let mut acc = vec![0u64; n];
        BinaryPolyMultiplier::unchecked(&key).mul_acc(&mut acc, &a, false);
    }

    #[test]
    fn matches_tfhe_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for n in [8usize, 64, 2048] {
            for trial in 0..6 {
                let s: Vec<u64> = match trial {
                    0 => vec![1; n], // the largest possible products
                    1 => vec![0; n],
                    _ => (0..n).map(|_| rng.gen_range(0..2)).collect(),
                };
                let a: Vec<u64> = match trial {
                    0 => vec![u64::MAX; n],
                    _ => (0..n).map(|_| rng.r#gen()).collect(),
                };
                let m = BinaryPolyMultiplier::new(&s);
                let mut acc = vec![0u64; n];
                m.mul_acc(&mut acc, &a, false);
                assert_eq!(acc, tfhe_product(&a, &s), "n={n} trial={trial}");
                m.mul_acc(&mut acc, &a, true);
                assert!(acc.iter().all(|&x| x == 0));
            }
        }
    }
}
