//! The proof of a compiled network ([`MlpServer::prove_network`]): for every hidden neuron,
//! the range of its input over every valid record and how far noise can move its reading; for
//! every score, that it cannot wrap and how far it can be from the integer reference.

use super::{MAX_HIDDEN_LAYERS, MAX_WEIGHT, MAX_WIDTH, MlpServer, Neuron, position_shift};
use crate::model::{MAX_FEATURES, MAX_OUTPUTS, ModelError};
use crate::params::{Encryption, ParamSet};
use crate::tree::{BootstrapNoise, TAIL_SIGMAS};
use std::collections::VecDeque;

/// What the proof found for one hidden neuron.
#[derive(Debug, Clone, PartialEq)]
pub struct NeuronBound {
    /// Positions noise can move the encrypted reading off the exact one (probability
    /// `>= 1 - 2^-128`).
    pub noise_positions: u32,
    /// Positions the exact readings of all valid inputs span: the resolution of the table.
    pub span_positions: u32,
    /// Largest `|encrypted output - reference output|` (torus units), counting the deviations
    /// of the neuron's inputs.
    pub deviation: f64,
    /// Smallest and largest output (two's complement torus values).
    pub min: i64,
    pub max: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerBound {
    pub neurons: Vec<NeuronBound>,
}

impl LayerBound {
    /// The narrowest resolution in the layer, in positions.
    pub fn min_span(&self) -> u32 {
        self.neurons
            .iter()
            .map(|b| b.span_positions)
            .min()
            .unwrap_or(0)
    }

    /// The widest noise window in the layer, in positions.
    pub fn max_noise(&self) -> u32 {
        self.neurons
            .iter()
            .map(|b| b.noise_positions)
            .max()
            .unwrap_or(0)
    }
}

/// The proof of a whole network.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpProof {
    pub layers: Vec<LayerBound>,
    /// Per score, the smallest and largest reference value in result units.
    pub score_range: Vec<(f64, f64)>,
    /// Per score, the standard deviation of its noise, in result units.
    pub score_sigma: Vec<f64>,
    /// Per score, the proven bound on `|decrypted - reference|` in result units: the inputs'
    /// deviations through the weights, the tail of the noise, half a decoding step.
    pub score_error: Vec<f64>,
}

fn malformed(detail: String) -> ModelError {
    ModelError::Inconsistent(format!("neural network: {detail}"))
}

/// Range, noise variance and deviation of `u = constant + sum(w * x)` over inputs in `ranges`
/// with noise variance `var` and deviations `dev` each.
fn affine(n: &Neuron, ranges: &[(i128, i128)], var: f64, dev: &[f64]) -> (i128, i128, f64, f64) {
    let mut lo = n.constant as i128;
    let mut hi = lo;
    let mut norm2 = 0f64;
    let mut d = 0f64;
    for ((&w, &(a, b)), &e) in n.weights.iter().zip(ranges).zip(dev) {
        let w128 = w as i128;
        if w >= 0 {
            lo += w128 * a;
            hi += w128 * b;
        } else {
            lo += w128 * b;
            hi += w128 * a;
        }
        norm2 += (w as f64) * (w as f64);
        d += (w as f64).abs() * e;
    }
    (lo, hi, norm2 * var, d)
}

/// For every index, the largest and smallest value within `radius` of it.
fn window_extrema(v: &[i64], radius: usize) -> (Vec<i64>, Vec<i64>) {
    let mut maxs = Vec::with_capacity(v.len());
    let mut mins = Vec::with_capacity(v.len());
    let (mut qmax, mut qmin) = (VecDeque::new(), VecDeque::new());
    let mut next = 0;
    for i in 0..v.len() {
        let end = (i + radius).min(v.len() - 1);
        while next <= end {
            while qmax.back().is_some_and(|&b: &usize| v[b] <= v[next]) {
                qmax.pop_back();
            }
            qmax.push_back(next);
            while qmin.back().is_some_and(|&b: &usize| v[b] >= v[next]) {
                qmin.pop_back();
            }
            qmin.push_back(next);
            next += 1;
        }
        let start = i.saturating_sub(radius);
        while qmax.front().is_some_and(|&f| f < start) {
            qmax.pop_front();
        }
        while qmin.front().is_some_and(|&f| f < start) {
            qmin.pop_front();
        }
        maxs.push(v[qmax[0]]);
        mins.push(v[qmin[0]]);
    }
    (maxs, mins)
}

impl MlpServer {
    fn check_shape(&self, n: usize) -> Result<(), ModelError> {
        let cols = self.input_columns as usize;
        if !(1..=MAX_FEATURES).contains(&cols) {
            return Err(malformed(format!("{cols} input columns")));
        }
        if !(1..=63).contains(&self.column_bits)
            || self.input_max == 0
            || (self.input_max as u128) >> self.column_bits != 0
        {
            return Err(malformed(format!(
                "inputs up to {} do not fit {}-bit columns",
                self.input_max, self.column_bits
            )));
        }
        if !(1..=MAX_HIDDEN_LAYERS).contains(&self.hidden.len()) {
            return Err(malformed(format!(
                "{} hidden layers; between 1 and {MAX_HIDDEN_LAYERS} are supported",
                self.hidden.len()
            )));
        }
        if !(1..=MAX_OUTPUTS).contains(&self.output.len()) || !(1..=62).contains(&self.output_bits)
        {
            return Err(malformed(format!(
                "{} scores at {} bits",
                self.output.len(),
                self.output_bits
            )));
        }
        let mut inputs = cols;
        for (li, layer) in self.hidden.iter().enumerate() {
            let width = layer.neurons.len();
            if !(1..=MAX_WIDTH).contains(&width) || layer.tables.len() != width {
                return Err(malformed(format!(
                    "hidden layer {li} has {width} neurons and {} tables (1..={MAX_WIDTH})",
                    layer.tables.len()
                )));
            }
            for (ni, (neuron, table)) in layer.neurons.iter().zip(&layer.tables).enumerate() {
                if neuron.weights.len() != inputs || table.len() != n {
                    return Err(malformed(format!(
                        "hidden layer {li} neuron {ni}: {} weights for {inputs} inputs, a table of {} for N = {n}",
                        neuron.weights.len(),
                        table.len()
                    )));
                }
            }
            inputs = width;
        }
        for (o, neuron) in self.output.iter().enumerate() {
            if neuron.weights.len() != inputs {
                return Err(malformed(format!(
                    "score {o}: {} weights for {inputs} inputs",
                    neuron.weights.len()
                )));
            }
        }
        let all = self
            .hidden
            .iter()
            .flat_map(|l| &l.neurons)
            .chain(&self.output);
        if all
            .flat_map(|n| &n.weights)
            .any(|w| w.unsigned_abs() > MAX_WEIGHT as u64)
        {
            return Err(malformed(format!(
                "a weight exceeds the largest supported magnitude 2^{}",
                MAX_WEIGHT.trailing_zeros()
            )));
        }
        Ok(())
    }

    /// Proves the network under `params`: every hidden neuron's inputs, noise included, span
    /// at most one turn of the bootstrap's `2N` positions (so each position means one input
    /// value), the deviation each activation can have from the reference, and that no score can
    /// wrap; or says which neuron or score fails.
    pub fn prove_network(&self, params: ParamSet) -> Result<MlpProof, ModelError> {
        self.prove_network_for(params, Encryption::SecretKey)
    }

    /// [`MlpServer::prove_network`] for inputs encrypted as `encryption` says (a public-key
    /// input's larger fresh noise enters the first layer's noise).
    pub fn prove_network_for(
        &self,
        params: ParamSet,
        encryption: Encryption,
    ) -> Result<MlpProof, ModelError> {
        let noise = BootstrapNoise::of(params);
        let n = params.polynomial_size();
        self.check_shape(n)?;
        let turn = 2 * n as i128;
        let t_shift = position_shift(n);
        let t = (1u128 << t_shift) as f64;
        let col_shift = 64 - self.column_bits as u32;
        let mut ranges =
            vec![(0i128, (self.input_max as i128) << col_shift); self.input_columns as usize];
        let mut dev = vec![0f64; ranges.len()];
        let mut var = encryption.fresh_variance_log2(params).exp2();
        let ksms = noise.keyswitch_modswitch_variance_log2.exp2();
        let mut layers = Vec::with_capacity(self.hidden.len());
        for (li, layer) in self.hidden.iter().enumerate() {
            let mut bounds = Vec::with_capacity(layer.neurons.len());
            for (ni, (neuron, table)) in layer.neurons.iter().zip(&layer.tables).enumerate() {
                let (lo, hi, v, d) = affine(neuron, &ranges, var, &dev);
                let sigma = (v + ksms).sqrt();
                let e_noise = (TAIL_SIGMAS * sigma / t).ceil() as i128 + 1;
                let (exact_lo, exact_hi) = (lo >> t_shift, (hi >> t_shift) + 1);
                let (plo, phi) = (exact_lo - e_noise, exact_hi + e_noise);
                if phi - plo + 1 > turn {
                    return Err(ModelError::Inconsistent(format!(
                        "neural network refused: hidden layer {li} neuron {ni}'s input, noise included, spans {} bootstrap positions, more than the {turn} of one turn; its lookup table could not tell inputs apart. Recompile (the compiler spreads each input over one turn)",
                        phi - plo + 1
                    )));
                }
                let reads: Vec<i64> = (plo..=phi)
                    .map(|p| super::read_table(table, p.rem_euclid(turn) as i64))
                    .collect();
                let min = *reads.iter().min().expect("one position at least");
                let max = *reads.iter().max().expect("one position at least");
                let radius = e_noise + (d / t).ceil() as i128;
                let (wmax, wmin) = window_extrema(&reads, radius.min(turn) as usize);
                let first = (exact_lo - plo) as usize;
                let last = (exact_hi - plo) as usize;
                let deviation = (first..=last)
                    .map(|i| {
                        let r = reads[i] as i128;
                        (wmax[i] as i128 - r).max(r - wmin[i] as i128)
                    })
                    .max()
                    .unwrap_or(0) as f64;
                bounds.push(NeuronBound {
                    noise_positions: e_noise as u32,
                    span_positions: (exact_hi - exact_lo + 1) as u32,
                    deviation,
                    min,
                    max,
                });
            }
            ranges = bounds
                .iter()
                .map(|b| (b.min as i128, b.max as i128))
                .collect();
            dev = bounds.iter().map(|b| b.deviation).collect();
            var = noise.pbs_output_variance_log2.exp2();
            layers.push(LayerBound { neurons: bounds });
        }
        let step = 2f64.powi(64 - self.output_bits as i32);
        let limit = 2f64.powi(63);
        let pack = noise.packing_variance_log2.exp2();
        let mut proof = MlpProof {
            layers,
            score_range: Vec::new(),
            score_sigma: Vec::new(),
            score_error: Vec::new(),
        };
        for (o, neuron) in self.output.iter().enumerate() {
            let (lo, hi, v, d) = affine(neuron, &ranges, var, &dev);
            let sigma = (v + pack).sqrt();
            // The encrypted inputs are table values too, so within the same ranges: only the
            // noise can carry a score past them.
            let margin = TAIL_SIGMAS * sigma;
            let (lo, hi) = (lo as f64, hi as f64);
            if lo - margin <= -limit || hi + margin >= limit {
                let value = if -lo > hi { lo } else { hi };
                return Err(ModelError::Range {
                    output: o,
                    value: value as i128,
                    needed_bits: ((value.abs() + margin).log2().ceil() as u32) + 1,
                    max_bits: 64,
                });
            }
            proof.score_range.push((lo / step, hi / step));
            proof.score_sigma.push(sigma / step);
            proof
                .score_error
                .push((d + TAIL_SIGMAS * sigma) / step + 0.5);
        }
        Ok(proof)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlp::HiddenLayer;

    const P: ParamSet = ParamSet::Glwe2048TUniform17;

    #[test]
    fn window_extrema_are_the_extrema_of_each_window() {
        let v = [3, 1, 4, 1, 5, 9, 2, 6];
        let (mx, mn) = window_extrema(&v, 1);
        assert_eq!(mx, vec![3, 4, 4, 5, 9, 9, 9, 6]);
        assert_eq!(mn, vec![1, 1, 1, 1, 1, 2, 2, 2]);
        let (mx, mn) = window_extrema(&v, 10);
        assert!(mx.iter().all(|&m| m == 9) && mn.iter().all(|&m| m == 1));
    }

    /// One input column in 0..=15, one neuron reading it over a ramp table, one score.
    fn tiny(weight: i64, constant: i64, out_weight: i64) -> MlpServer {
        let n = P.polynomial_size();
        MlpServer {
            input_columns: 1,
            column_bits: 8,
            input_max: 15,
            hidden: vec![HiddenLayer {
                neurons: vec![Neuron {
                    weights: vec![weight],
                    constant,
                }],
                tables: vec![(0..n as i64).map(|p| (p - 1024) << 40).collect()],
            }],
            output: vec![Neuron {
                weights: vec![out_weight],
                constant: 0,
            }],
            output_bits: 20,
        }
    }

    #[test]
    fn a_network_within_one_turn_is_proven_and_one_beyond_is_refused() {
        // Column step 2^56 = 16 positions; 15 steps span 240 positions from position 1024.
        let m = tiny(1, 1024 << 52, 1);
        let proof = m.prove_network(P).unwrap();
        let b = &proof.layers[0].neurons[0];
        assert!(b.span_positions >= 240 && b.span_positions <= 242, "{b:?}");
        // Noise of the keyswitch and modulus switch: 13.2 sigma of 4.8 positions.
        assert!((64..=66).contains(&b.noise_positions), "{b:?}");
        // A ramp of 2^40 per position: the deviation is the noise window times the slope.
        assert_eq!(b.deviation, (b.noise_positions as f64) * 2f64.powi(40));
        assert!(proof.score_error[0] > 0.5);
        // 320 positions per column step: 4,800 positions, beyond one turn of 4,096.
        let m = tiny(20, 0, 1);
        assert!(m.prove_network(P).is_err());
        // A score that can wrap is refused.
        let m = tiny(1, 1024 << 52, 1 << 30);
        assert!(matches!(m.prove_network(P), Err(ModelError::Range { .. })));
    }

    #[test]
    fn malformed_networks_are_refused_before_anything_is_sized() {
        let mut m = tiny(1, 0, 1);
        m.hidden[0].tables[0].pop();
        assert!(m.prove_network(P).is_err());
        let mut m = tiny(1, 0, 1);
        m.output[0].weights.push(1);
        assert!(m.prove_network(P).is_err());
        let mut m = tiny(1, 0, 1);
        m.hidden[0].neurons[0].weights[0] = MAX_WEIGHT + 1;
        assert!(m.prove_network(P).is_err());
        let mut m = tiny(1, 0, 1);
        m.input_max = 1 << 16;
        assert!(m.prove_network(P).is_err());
        let mut m = tiny(1, 0, 1);
        m.hidden.clear();
        assert!(m.prove_network(P).is_err());
    }
}
