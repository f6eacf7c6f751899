//! Multi-layer perceptrons on encrypted records: the server's integer network, its proof, and
//! the client's quantization and readout.
//!
//! The first layer is computed on GLWE columns like a linear model (one multiply-add per
//! weight serves every record of a chunk), then every hidden neuron of every record is read by
//! one programmable bootstrap whose lookup table applies bias, activation and requantization
//! at once; later layers are integer combinations of the bootstrap outputs, and the output
//! layer's scores are packed into GLWE results for the client.
//!
//! **How a bootstrap reads a neuron.** A neuron's value `u` (a 64-bit torus value) is read at
//! the position `p = round(u / 2^(64 - log2(2N)))` of the `2N` positions of the blind rotation,
//! and the bootstrap outputs `table[p]` for `p < N`, `-table[p - N]` above (the negacyclic
//! rotation). The encrypted reading is off by the keyswitch, modulus-switch and input noise,
//! at most `E` positions with probability `1 - 2^-128` (`E` proven per neuron by
//! [`MlpServer::prove_network`]). The compiler (`fhe-batch-train`) spreads each neuron's whole
//! proven input range over nearly all `2N` positions: the activation is saturated at both ends
//! of its calibrated range and centred, so the negacyclic image of the low end is the high end
//! and no padding bit is spent.
//!
//! **What is exact and what is not.** The integer reference [`MlpServer::eval_plain`] reads
//! every table at the exact position. The encrypted evaluation reads within the proven window,
//! so each activation deviates from the reference by at most the table's variation over that
//! window ([`NeuronBound::deviation`]), and each score by at most
//! [`MlpProof::score_error`]: a proven bound, not exactness. How often the predicted class
//! agrees with the reference is measured (`fhe-batch bench --mlp`) and estimated at compile
//! time by simulating the proven noise.

mod family;
mod proof;
mod readout;

pub use proof::{LayerBound, MlpProof, NeuronBound};
pub use readout::MlpClient;

use serde::{Deserialize, Serialize};

/// Most hidden layers a network may have.
pub const MAX_HIDDEN_LAYERS: usize = 4;
/// Widest hidden layer.
pub const MAX_WIDTH: usize = 1024;
/// Largest integer weight magnitude (keeps every proof sum inside `i128`).
pub const MAX_WEIGHT: i64 = 1 << 40;

/// One neuron: `u = constant + sum(weights[i] * input[i])`, wrapping on the 64-bit torus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neuron {
    pub weights: Vec<i64>,
    /// Torus value added to the sum (two's complement).
    pub constant: i64,
}

impl Neuron {
    /// `u` on plaintext torus values.
    pub fn value(&self, inputs: &[u64]) -> u64 {
        self.weights
            .iter()
            .zip(inputs)
            .fold(self.constant as u64, |acc, (&w, &x)| {
                acc.wrapping_add((w as u64).wrapping_mul(x))
            })
    }
}

/// A bootstrapped layer: one programmable bootstrap per neuron.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HiddenLayer {
    pub neurons: Vec<Neuron>,
    /// Per neuron, its lookup table: `N` torus values (two's complement), read as the module
    /// docs say.
    pub tables: Vec<Vec<i64>>,
}

/// The server's part of a compiled network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpServer {
    /// Quantized features per record (ciphertext columns).
    pub input_columns: u32,
    /// A column value `q` is encrypted as `q * 2^(64 - column_bits)`.
    pub column_bits: u8,
    /// Every column value lies in `0..=input_max` (the client's quantizer clamps).
    pub input_max: u32,
    pub hidden: Vec<HiddenLayer>,
    /// The scores: integer combinations of the last hidden layer's outputs.
    pub output: Vec<Neuron>,
    /// Scores are decoded from their top `output_bits` bits, as signed integers.
    pub output_bits: u8,
}

/// log2 of the number of torus units per bootstrap position for polynomial size `n`.
pub fn position_shift(n: usize) -> u32 {
    64 - (2 * n).trailing_zeros()
}

/// The value a lookup table outputs at position `p` (any integer: taken mod `2N`).
pub fn read_table(table: &[i64], p: i64) -> i64 {
    let n = table.len() as i64;
    let m = p.rem_euclid(2 * n);
    if m < n {
        table[m as usize]
    } else {
        table[(m - n) as usize].wrapping_neg()
    }
}

/// Decodes a score's torus value to its signed `bits`-bit integer (rounding to nearest).
pub fn decode_score(u: u64, bits: u8) -> i64 {
    let shift = 64 - bits as u32;
    let v = u.wrapping_add(1u64 << (shift - 1)) >> shift;
    let half = 1u64 << (bits - 1);
    if v >= half {
        v as i64 - (1i64 << bits)
    } else {
        v as i64
    }
}

impl MlpServer {
    /// Bootstraps per record: one per hidden neuron.
    pub fn neurons(&self) -> usize {
        self.hidden.iter().map(|l| l.neurons.len()).sum()
    }

    /// The integer reference: the scores' torus values when every table is read at its exact
    /// position (`columns` are the quantized column values).
    pub fn scores_torus(&self, columns: &[u64]) -> Vec<u64> {
        let n = self.hidden.first().map_or(1, |l| l.tables[0].len());
        let t_shift = position_shift(n);
        let half = 1u64 << (t_shift - 1);
        let col_shift = 64 - self.column_bits as u32;
        let mut x: Vec<u64> = columns.iter().map(|&q| q << col_shift).collect();
        for layer in &self.hidden {
            x = layer
                .neurons
                .iter()
                .zip(&layer.tables)
                .map(|(neuron, table)| {
                    let p = neuron.value(&x).wrapping_add(half) >> t_shift;
                    read_table(table, p as i64) as u64
                })
                .collect();
        }
        self.output.iter().map(|o| o.value(&x)).collect()
    }

    /// The integer reference of the result values: every score decoded at `output_bits`.
    pub fn eval_plain(&self, columns: &[u64]) -> Vec<i64> {
        self.scores_torus(columns)
            .into_iter()
            .map(|u| decode_score(u, self.output_bits))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_read_negacyclically_and_scores_decode_signed() {
        let t = vec![1, 2, 3, 4];
        assert_eq!(read_table(&t, 0), 1);
        assert_eq!(read_table(&t, 3), 4);
        assert_eq!(read_table(&t, 4), -1);
        assert_eq!(read_table(&t, 7), -4);
        assert_eq!(read_table(&t, -1), -4);
        assert_eq!(read_table(&t, 8), 1);
        assert_eq!(decode_score(5u64 << 48, 16), 5);
        assert_eq!(decode_score((-5i64 as u64) << 48, 16), -5);
        // Rounds to nearest: just under half a step above 5 is 5, just over is 6.
        assert_eq!(decode_score((5u64 << 48) + (1 << 47) - 1, 16), 5);
        assert_eq!(decode_score((5u64 << 48) + (1 << 47), 16), 6);
        assert_eq!(position_shift(2048), 52);
    }
}
