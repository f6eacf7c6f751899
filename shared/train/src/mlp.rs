//! Compiling a float network ([`fhe_batch_onnx::Mlp`]) into the integer network the server
//! evaluates ([`MlpServer`]) and the client part ([`MlpClient`]).
//!
//! - Features are quantized to `n_bits` over their calibration range (the client clamps to
//!   it); a scaler in front is folded into the first layer; features constant over the
//!   calibration data are pinned to their value.
//! - Each hidden neuron's activation is evaluated on its pre-activation clamped to the range
//!   the calibration records reach (ReLU from 0 to its calibrated maximum), so it is saturated
//!   at both ends. Centred, the low end is the negation of the high end, which lets the proven
//!   worst-case input range of the neuron spread over nearly all `2N` bootstrap positions.
//! - Later layers and the scores combine bootstrap outputs with integer weights of
//!   [`OUTPUT_WEIGHT_BITS`] bits per source neuron (the scale of each neuron's table carries
//!   the rest), trading rounding against the bootstrap output noise those weights multiply.
//!   Each neuron's (and score's) weights are rounded together against the calibration
//!   records' activations, not one by one ([`round_together`]): on MNIST 784-128-10 the
//!   integer network's predictions then agree with the float network's on 99.8% of the test
//!   digits instead of 98.85%, at the same weight width and noise. The rounding counts the
//!   bootstrap output noise each unit of weight multiplies, so where two roundings are about
//!   as good it takes the smaller weight.
//! - The result is proven by [`MlpServer::prove_network`]; the report gives float and
//!   quantized accuracy (or R^2) and the agreement of the encrypted predictions with the
//!   integer reference estimated by simulating the proven noise on the evaluation records.

use crate::data::{Dataset, Target};
use crate::import::{ImportData, ImportOptions};
use crate::metrics::{ErrorFigures, RegressionErrors};
use crate::model::TrainError;
use fhe_batch_core::mlp::{HiddenLayer, MlpClient, MlpProof, MlpServer, Neuron};
use fhe_batch_core::model::{
    ClientBody, ClientModel, CompileReport, ModelPackage, Quantizer, ServerBody, ServerModel,
};
use fhe_batch_core::params::{Encryption, ParamSet};
use fhe_batch_core::tree::{BootstrapNoise, TAIL_SIGMAS};
use fhe_batch_onnx::{Activation, Mlp, OnnxTask};
use rand::{Rng, SeedableRng};

/// Bits (with sign) of the integer weights applied to bootstrap outputs.
pub const OUTPUT_WEIGHT_BITS: u8 = 4;

/// What compiling a network decided, for the compile report.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpSummary {
    pub layers: Vec<usize>,
    pub activations: Vec<&'static str>,
    pub pbs_per_record: usize,
    pub input_bits: u8,
    /// Per hidden layer: the narrowest span of a neuron's inputs over the bootstrap's
    /// positions, and the widest noise window.
    pub min_span_positions: Vec<u32>,
    pub max_noise_positions: Vec<u32>,
    /// The largest proven score error relative to the widest score range.
    pub score_error_ratio: f64,
    /// Float and quantized metric, agreement estimated by simulating the noise.
    pub report: CompileReport,
    /// Share of records whose simulated encrypted prediction equals the integer reference's
    /// (regressors: lies within 1% of the target range of it), over [`SIM_DRAWS`] noise draws.
    pub simulated_agreement: f64,
    /// Classifiers: share of records whose simulated encrypted prediction is their true label
    /// (the accuracy to expect from encrypted runs, noise included), over [`SIM_DRAWS`]
    /// noise draws.
    pub simulated_accuracy: Option<f64>,
    /// Regressors: error figures (MAE, RMSE, R^2) against the target of the float network, of
    /// the integer reference, and of the simulated encrypted predictions.
    pub errors: Option<RegressionErrors>,
    /// Records per chunk at the parameters' polynomial size (set by the caller's budget).
    pub records_per_chunk: usize,
}

/// A compiled network: its package and summary.
#[derive(Debug, Clone)]
pub struct CompiledMlp {
    pub package: ModelPackage,
    pub summary: MlpSummary,
    pub proof: MlpProof,
}

fn unsupported(why: impl Into<String>) -> TrainError {
    TrainError::Unsupported(why.into())
}

/// The clamped activation of one neuron: `act(clamp(z, lo, hi))`, centred.
#[derive(Debug, Clone, Copy)]
struct Clamp {
    act: Activation,
    lo: f64,
    hi: f64,
    mid: f64,
}

impl Clamp {
    fn new(act: Activation, cal_lo: f64, cal_hi: f64) -> Self {
        let (lo, hi) = match act {
            Activation::Relu => (0.0, cal_hi.max(1e-6)),
            _ if cal_hi > cal_lo => (cal_lo, cal_hi),
            _ => (cal_lo - 1e-6, cal_lo + 1e-6),
        };
        let f = |z: f64| act.apply(z as f32) as f64;
        Self {
            act,
            lo,
            hi,
            mid: (f(lo) + f(hi)) / 2.0,
        }
    }

    /// The clamped activation, not centred.
    fn phi(&self, z: f64) -> f64 {
        self.act.apply(z.clamp(self.lo, self.hi) as f32) as f64
    }

    fn range(&self) -> (f64, f64) {
        (self.phi(self.lo), self.phi(self.hi))
    }
}

/// Real-valued affine stage: `z[o] = bias[o] + sum(w[o][i] * x[i])`.
struct Affine {
    weights: Vec<Vec<f64>>,
    bias: Vec<f64>,
}

impl Affine {
    fn apply(&self, x: &[f64]) -> Vec<f64> {
        self.weights
            .iter()
            .zip(&self.bias)
            .map(|(w, b)| b + w.iter().zip(x).map(|(w, x)| w * x).sum::<f64>())
            .collect()
    }

    /// Worst case over inputs in `ranges`.
    fn bounds(&self, ranges: &[(f64, f64)]) -> Vec<(f64, f64)> {
        self.weights
            .iter()
            .zip(&self.bias)
            .map(|(w, &b)| {
                w.iter()
                    .zip(ranges)
                    .fold((b, b), |(lo, hi), (&w, &(a, c))| {
                        if w >= 0.0 {
                            (lo + w * a, hi + w * c)
                        } else {
                            (lo + w * c, hi + w * a)
                        }
                    })
            })
            .collect()
    }
}

fn wrap(v: f64) -> i64 {
    (v.round() as i128).rem_euclid(1i128 << 64) as u64 as i64
}

/// `A^T A` of the activations `acts` (records x neurons, row-major), each centred on its
/// table's midpoint as the scores read it (`phi - mid`).
fn centred_gram(acts: &[f64], clamps: &[Clamp]) -> Vec<f64> {
    let m = clamps.len();
    let mut gram = vec![0f64; m * m];
    let mut a = vec![0f64; m];
    for rec in acts.chunks_exact(m) {
        for ((x, &v), c) in a.iter_mut().zip(rec).zip(clamps) {
            *x = v - c.mid;
        }
        for j in 0..m {
            if a[j] == 0.0 {
                continue;
            }
            let row = &mut gram[j * m..(j + 1) * m];
            for (k, g) in row.iter_mut().enumerate().skip(j) {
                *g += a[j] * a[k];
            }
        }
    }
    for j in 0..m {
        for k in 0..j {
            gram[j * m + k] = gram[k * m + j];
        }
    }
    gram
}

/// Integer weights for `target` in units of `step`, rounded together against the calibration
/// records rather than one by one: starting from the nearest integers, moves a weight by one
/// step (within `cap`) while that lowers the expected squared error over the records,
/// `d^T G d + noise * sum(w^2)` with `d = weights * step - target`, `G` their activations'
/// [`centred_gram`] and `noise` the records' count times the variance one unit of weight adds
/// (each weight multiplies a bootstrap output's noise). Only the rounding changes: the weights
/// stay within one step of `target / step` or of `cap`.
fn round_together(gram: &[f64], step: &[f64], target: &[f64], cap: i64, noise: f64) -> Vec<i64> {
    let mut weights: Vec<i64> = target
        .iter()
        .zip(step)
        .map(|(t, s)| (t / s).round() as i64)
        .collect();
    refine_rounding(gram, step, target, &mut weights, cap, noise);
    weights
}

/// [`round_together`]'s descent from `weights`.
fn refine_rounding(
    gram: &[f64],
    step: &[f64],
    target: &[f64],
    weights: &mut [i64],
    cap: i64,
    noise: f64,
) {
    let m = step.len();
    let d: Vec<f64> = (0..m)
        .map(|j| weights[j] as f64 * step[j] - target[j])
        .collect();
    let mut gd: Vec<f64> = (0..m)
        .map(|j| (0..m).map(|k| gram[j * m + k] * d[k]).sum())
        .collect();
    for _pass in 0..32 {
        let mut moved = false;
        for j in 0..m {
            let gjj = gram[j * m + j];
            if gjj <= 0.0 {
                continue;
            }
            for delta in [-1i64, 1] {
                let q = weights[j] + delta;
                let exact = target[j] / step[j];
                if q.abs() > cap.max(exact.abs().ceil() as i64) || (q as f64 - exact).abs() >= 1.0 {
                    continue;
                }
                let dd = delta as f64 * step[j];
                let change = 2.0 * dd * gd[j]
                    + dd * dd * gjj
                    + noise * (q * q - weights[j] * weights[j]) as f64;
                if change < -1e-12 * gjj * step[j] * step[j] {
                    weights[j] = q;
                    for (k, g) in gd.iter_mut().enumerate() {
                        *g += dd * gram[k * m + j];
                    }
                    moved = true;
                    break;
                }
            }
        }
        if !moved {
            break;
        }
    }
}

/// Compiles `mlp` against `data.calibration` (quantizer ranges and activation ranges) and
/// reports on `data.eval`; feature and target names are `data.all`'s.
pub fn compile_mlp(
    mlp: &Mlp,
    data: ImportData<'_>,
    options: &ImportOptions,
) -> Result<CompiledMlp, TrainError> {
    let (calibration, eval, evaluated_on) = (data.calibration, data.eval, data.evaluated_on);
    let (n_bits, params) = (options.n_bits, options.params);
    let feature_names = data.all.feature_names.clone();
    let target = data.all.target_name.clone();
    let f = mlp.n_features;
    if feature_names.len() != f || calibration.n_features() != f || eval.n_features() != f {
        return Err(unsupported(format!(
            "the network takes {f} features; the data set has {}",
            calibration.n_features()
        )));
    }
    if !(2..=12).contains(&n_bits) {
        return Err(TrainError::Bits(n_bits));
    }
    if calibration.is_empty() {
        return Err(TrainError::Empty);
    }
    let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
    if mlp
        .layers
        .iter()
        .any(|l| !finite(&l.weights) || !finite(&l.bias))
        || mlp
            .scaler
            .as_ref()
            .is_some_and(|s| !finite(&s.offset) || !finite(&s.scale))
    {
        return Err(unsupported(
            "the network has a weight, bias or scaler value that is not a finite number",
        ));
    }
    if mlp.layers.len() < 2 {
        return Err(unsupported(
            "the network has no hidden layer: import it as a linear model",
        ));
    }
    let noise = BootstrapNoise::of(params);
    let n = params.polynomial_size();
    let t = 2f64.powi(64 - (2 * n).trailing_zeros() as i32);
    let top = ((1u64 << n_bits) - 1) as f64;
    // Quantizers and the first layer per quantization step, the scaler folded in.
    let mut quantizers = Vec::with_capacity(f);
    let mut pinned = vec![false; f];
    for (j, pin) in pinned.iter_mut().enumerate() {
        let (lo, hi) = (0..calibration.len())
            .map(|i| calibration.x[i * f + j])
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        *pin = hi <= lo || hi.is_nan() || lo.is_nan();
        let scale = if hi > lo { (hi - lo) / top } else { 1.0 };
        quantizers.push(Quantizer { min: lo, scale });
    }
    let (offset, kscale): (Vec<f64>, Vec<f64>) = match &mlp.scaler {
        Some(s) => (
            s.offset.iter().map(|&v| v as f64).collect(),
            s.scale.iter().map(|&v| v as f64).collect(),
        ),
        None => (vec![0.0; f], vec![1.0; f]),
    };
    let first = &mlp.layers[0];
    let first_affine = Affine {
        weights: (0..first.outputs)
            .map(|o| {
                (0..f)
                    .map(|j| {
                        if pinned[j] {
                            0.0
                        } else {
                            first.weights[o * f + j] as f64 * kscale[j] * quantizers[j].scale
                        }
                    })
                    .collect()
            })
            .collect(),
        bias: (0..first.outputs)
            .map(|o| {
                first.bias[o] as f64
                    + (0..f)
                        .map(|j| {
                            first.weights[o * f + j] as f64
                                * (quantizers[j].min - offset[j])
                                * kscale[j]
                        })
                        .sum::<f64>()
            })
            .collect(),
    };
    let later: Vec<Affine> = mlp.layers[1..]
        .iter()
        .map(|l| Affine {
            weights: l
                .weights
                .chunks_exact(l.inputs)
                .map(|r| r.iter().map(|&w| w as f64).collect())
                .collect(),
            bias: l.bias.iter().map(|&b| b as f64).collect(),
        })
        .collect();
    let affines: Vec<&Affine> = std::iter::once(&first_affine).chain(&later).collect();
    let hidden_count = mlp.layers.len() - 1;
    // Calibration: pre-activation ranges per hidden neuron, on the quantized inputs.
    let columns_of = |ds: &Dataset, i: usize| -> Vec<u64> {
        (0..f)
            .map(|j| quantizers[j].quantize(ds.x[i * f + j], n_bits))
            .collect()
    };
    let mut cal: Vec<Vec<(f64, f64)>> = mlp.layers[..hidden_count]
        .iter()
        .map(|l| vec![(f64::INFINITY, f64::NEG_INFINITY); l.outputs])
        .collect();
    // Each hidden layer's activations on every calibration record (what the weights reading
    // them are rounded against).
    let mut acts: Vec<Vec<f64>> = mlp.layers[..hidden_count]
        .iter()
        .map(|l| Vec::with_capacity(calibration.len() * l.outputs))
        .collect();
    for i in 0..calibration.len() {
        let mut x: Vec<f64> = columns_of(calibration, i)
            .iter()
            .map(|&q| q as f64)
            .collect();
        for (li, a) in affines[..hidden_count].iter().enumerate() {
            let z = a.apply(&x);
            for (r, &v) in cal[li].iter_mut().zip(&z) {
                *r = (r.0.min(v), r.1.max(v));
            }
            let act = mlp.layers[li].activation;
            x = z.iter().map(|&v| act.apply(v as f32) as f64).collect();
            acts[li].extend_from_slice(&x);
        }
    }
    let clamps: Vec<Vec<Clamp>> = cal
        .iter()
        .zip(&mlp.layers)
        .map(|(r, l)| {
            r.iter()
                .map(|&(a, b)| Clamp::new(l.activation, a, b))
                .collect()
        })
        .collect();
    // Worst-case pre-activation ranges over every valid input.
    let mut ranges: Vec<(f64, f64)> = (0..f)
        .map(|j| if pinned[j] { (0.0, 0.0) } else { (0.0, top) })
        .collect();
    let mut worst: Vec<Vec<(f64, f64)>> = Vec::new();
    for li in 0..hidden_count {
        let b = affines[li].bounds(&ranges);
        ranges = clamps[li].iter().map(Clamp::range).collect();
        worst.push(b);
    }
    let score_bounds = affines[hidden_count].bounds(&ranges);
    let grams: Vec<Vec<f64>> = acts
        .iter()
        .zip(&clamps)
        .map(|(a, c)| centred_gram(a, c))
        .collect();
    drop(acts);
    let lw = ((1i64 << (OUTPUT_WEIGHT_BITS - 1)) - 1) as f64;
    let records = calibration.len() as f64;
    let ksms = noise.keyswitch_modswitch_variance_log2.exp2();
    let v_pbs = noise.pbs_output_variance_log2.exp2();
    // Positions per real unit of each hidden neuron, shrunk on refusal.
    let mut shrink = 1.0f64;
    let mut refused = None;
    for _attempt in 0..6 {
        let pos_scale: Vec<Vec<f64>> = (0..hidden_count)
            .map(|li| {
                let inputs = affines[li].weights.first().map_or(0, Vec::len) as f64;
                let var = if li == 0 {
                    ksms
                } else {
                    ksms + inputs * lw * lw * v_pbs / 3.0
                };
                let e = (TAIL_SIGMAS * var.sqrt() / t).ceil() + 3.0;
                clamps[li]
                    .iter()
                    .zip(&worst[li])
                    .map(|(c, &(zlo, zhi))| {
                        let span = (zhi.max(c.hi) - c.lo).max(c.hi - zlo.min(c.lo));
                        shrink * (n as f64 - e) / span
                    })
                    .collect()
            })
            .collect();
        // Score scale: each score centred on its own proven range (the client adds the centre
        // back), the widest half range within 2^63 with a margin. One scale for all scores
        // keeps their comparison exact.
        let centres: Vec<f64> = score_bounds.iter().map(|&(a, b)| (a + b) / 2.0).collect();
        let half = score_bounds
            .iter()
            .map(|&(a, b)| (b - a) / 2.0)
            .fold(1e-12, f64::max);
        let h_out = shrink * 0.9 * 2f64.powi(63) / half;
        // Torus per real unit of each hidden neuron's output: from what its readers need, so
        // that the largest integer weight reading it is `lw`. A reader's integer weight is
        // `c * (its torus per real unit) / g`, so the scale follows the largest product of a
        // reader's weight and its scale, not the largest weight times the largest scale: a
        // reader with a huge scale and no weight (a neuron whose weights are all zero has a
        // near-empty range, so a huge scale) must not coarsen every other reader's weights.
        let out_scale: Vec<Vec<f64>> = (0..hidden_count)
            .map(|li| {
                let readers = affines[li + 1];
                let reader_scale: Vec<f64> = if li + 1 == hidden_count {
                    vec![h_out; readers.weights.len()]
                } else {
                    pos_scale[li + 1].iter().map(|&a| a * t).collect()
                };
                (0..clamps[li].len())
                    .map(|j| {
                        let need = readers
                            .weights
                            .iter()
                            .zip(&reader_scale)
                            .fold(0f64, |m, (r, &h)| m.max(r[j].abs() * h));
                        let (a, b) = clamps[li][j].range();
                        let amp = ((b - a) / 2.0).abs().max(1e-12);
                        let g = if need > 0.0 { need / lw } else { 1.0 };
                        g.min(0.9 * 2f64.powi(62) / amp)
                    })
                    .collect()
            })
            .collect();
        let cb = {
            let largest = affines[0]
                .weights
                .iter()
                .zip(&pos_scale[0])
                .flat_map(|(r, a)| r.iter().map(move |w| (w * a).abs()))
                .fold(1e-12, f64::max);
            (12.0 + (30.0 - largest.log2()).floor()).clamp(n_bits as f64 + 1.0, 63.0) as u8
        };
        let mut hidden = Vec::with_capacity(hidden_count);
        for li in 0..hidden_count {
            let a = &pos_scale[li];
            let neurons: Vec<Neuron> = (0..clamps[li].len())
                .map(|k| {
                    let c = &clamps[li][k];
                    let row = &affines[li].weights[k];
                    let bias = affines[li].bias[k];
                    if li == 0 {
                        let unit = 2f64.powi(cb as i32 - 12);
                        Neuron {
                            weights: row
                                .iter()
                                .map(|w| (w * a[k] * unit).round() as i64)
                                .collect(),
                            constant: wrap(a[k] * (bias - c.lo) * t),
                        }
                    } else {
                        let prev = &clamps[li - 1];
                        let g = &out_scale[li - 1];
                        let mid: f64 = row.iter().zip(prev).map(|(w, p)| w * p.mid).sum();
                        let step: Vec<f64> = g.iter().map(|g| g / (a[k] * t)).collect();
                        // A unit of weight adds one bootstrap output's variance, in this
                        // neuron's real units.
                        let unit_noise = records * v_pbs / (a[k] * t).powi(2);
                        let weights =
                            round_together(&grams[li - 1], &step, row, lw as i64, unit_noise);
                        Neuron {
                            weights,
                            constant: wrap(a[k] * t * (mid + bias - c.lo)),
                        }
                    }
                })
                .collect();
            let tables: Vec<Vec<i64>> = (0..clamps[li].len())
                .map(|k| {
                    let c = &clamps[li][k];
                    let g = out_scale[li][k];
                    (0..n)
                        .map(|p| ((c.phi(c.lo + p as f64 / a[k]) - c.mid) * g).round() as i64)
                        .collect()
                })
                .collect();
            hidden.push(HiddenLayer { neurons, tables });
        }
        let last = &clamps[hidden_count - 1];
        let g = &out_scale[hidden_count - 1];
        let out_affine = affines[hidden_count];
        let output: Vec<Neuron> = out_affine
            .weights
            .iter()
            .zip(&out_affine.bias)
            .zip(&centres)
            .map(|((row, &b), &centre)| {
                let mid: f64 = row.iter().zip(last).map(|(w, p)| w * p.mid).sum();
                let step: Vec<f64> = g.iter().map(|g| g / h_out).collect();
                let unit_noise = records * v_pbs / h_out.powi(2);
                let weights =
                    round_together(&grams[hidden_count - 1], &step, row, lw as i64, unit_noise);
                Neuron {
                    weights,
                    constant: wrap(h_out * (mid + b - centre)),
                }
            })
            .collect();
        // Decode a step below the smallest score noise.
        let sigma_min = output
            .iter()
            .map(|o| {
                let norm2: f64 = o.weights.iter().map(|&w| (w as f64).powi(2)).sum();
                (norm2 * v_pbs + noise.packing_variance_log2.exp2()).sqrt()
            })
            .fold(f64::INFINITY, f64::min);
        let output_bits = (64.0 - (sigma_min.log2() - 2.0).floor()).clamp(8.0, 62.0) as u8;
        let server = MlpServer {
            input_columns: f as u32,
            column_bits: cb,
            input_max: top as u32,
            hidden,
            output,
            output_bits,
        };
        // Proven for public-key batches when it can be (their fresh noise is larger, and a
        // network that admits them admits secret-key batches too), else for secret-key
        // batches alone; the report gives the secret-key figures.
        let proof = match server.prove_network_for(params, Encryption::PublicKey) {
            Ok(_) => server.prove_network(params)?,
            Err(e) if shrink > 0.8 => {
                shrink *= 0.97;
                refused = Some(e);
                continue;
            }
            Err(_) => server.prove_network(params)?,
        };
        let step = 2f64.powi(64 - output_bits as i32);
        let labels = match &mlp.task {
            OnnxTask::Classifier { labels } => relabel(labels, &calibration.y)?,
            OnnxTask::Regressor { .. } => Vec::new(),
        };
        let client = MlpClient {
            quantizers: quantizers.clone(),
            input_bits: n_bits,
            column_bits: cb,
            output_bits,
            n_scores: server.output.len() as u32,
            score_scale: step / h_out,
            score_offset: 0.0,
            score_offsets: centres,
            labels,
            post: mlp.post,
        };
        let summary_layers: Vec<usize> = std::iter::once(f)
            .chain(mlp.layers.iter().map(|l| l.outputs))
            .collect();
        let (report, simulated, simulated_accuracy, errors) = report(
            mlp,
            &server,
            &client,
            eval,
            evaluated_on,
            &columns_of,
            params,
        );
        let widest = proof
            .score_range
            .iter()
            .map(|r| r.1 - r.0)
            .fold(0f64, f64::max)
            .max(1.0);
        let summary = MlpSummary {
            layers: summary_layers,
            activations: mlp.layers[..hidden_count]
                .iter()
                .map(|l| l.activation.name())
                .collect(),
            pbs_per_record: server.neurons(),
            input_bits: n_bits,
            min_span_positions: proof.layers.iter().map(|l| l.min_span()).collect(),
            max_noise_positions: proof.layers.iter().map(|l| l.max_noise()).collect(),
            score_error_ratio: proof.score_error.iter().cloned().fold(0f64, f64::max) / widest,
            report: report.clone(),
            simulated_agreement: simulated,
            simulated_accuracy,
            errors,
            records_per_chunk: 0,
        };
        let package = ModelPackage::build(
            ServerModel::new(params, ServerBody::NeuralNetwork(server)),
            ClientModel::new(
                params,
                feature_names,
                target,
                ClientBody::NeuralNetwork(client),
            ),
            report,
        )?;
        return Ok(CompiledMlp {
            package,
            summary,
            proof,
        });
    }
    Err(refused.map_or_else(
        || unsupported("the network could not be proven"),
        TrainError::from,
    ))
}

/// The model's class labels as the data set names them (numbered labels `0..C` stand for the
/// data set's sorted names).
fn relabel(labels: &[String], y: &Target) -> Result<Vec<String>, TrainError> {
    let Target::Classes { names, .. } = y else {
        return Err(unsupported(
            "the network is a classifier but the label column is numeric",
        ));
    };
    let model_class = crate::onnx::model_class_of(labels, names)?;
    let mut out = labels.to_vec();
    for (c, &k) in model_class.iter().enumerate() {
        out[k] = names[c].clone();
    }
    Ok(out)
}

/// The integer network with the proven noise drawn at random: Gaussian keyswitch and
/// modulus-switch noise at every reading, bootstrap output noise on every activation, packing
/// noise on every score.
pub fn simulate_scores(
    server: &MlpServer,
    columns: &[u64],
    params: ParamSet,
    rng: &mut impl Rng,
) -> Vec<i64> {
    let noise = BootstrapNoise::of(params);
    let gauss = |rng: &mut dyn rand::RngCore, sigma: f64| -> f64 {
        let (u1, u2): (f64, f64) = (rng.r#gen::<f64>().max(1e-300), rng.r#gen());
        sigma * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    };
    let n = params.polynomial_size();
    let t_shift = 64 - (2 * n).trailing_zeros();
    let ksms = noise.keyswitch_modswitch_variance_log2.exp2();
    let fresh = noise.fresh_variance_log2.exp2();
    let pbs = noise.pbs_output_variance_log2.exp2().sqrt();
    let pack = noise.packing_variance_log2.exp2().sqrt();
    let shift = 64 - server.column_bits as u32;
    let mut x: Vec<u64> = columns.iter().map(|&q| q << shift).collect();
    for (li, layer) in server.hidden.iter().enumerate() {
        x = layer
            .neurons
            .iter()
            .zip(&layer.tables)
            .map(|(neuron, table)| {
                let mut var = ksms;
                if li == 0 {
                    var += fresh
                        * neuron
                            .weights
                            .iter()
                            .map(|&w| (w as f64).powi(2))
                            .sum::<f64>();
                }
                let u = neuron
                    .value(&x)
                    .wrapping_add(gauss(rng, var.sqrt()) as i64 as u64);
                let p = u.wrapping_add(1u64 << (t_shift - 1)) >> t_shift;
                let h = fhe_batch_core::mlp::read_table(table, p as i64);
                h.wrapping_add(gauss(rng, pbs) as i64) as u64
            })
            .collect();
    }
    server
        .output
        .iter()
        .map(|o| {
            let u = o.value(&x).wrapping_add(gauss(rng, pack) as i64 as u64);
            fhe_batch_core::mlp::decode_score(u, server.output_bits)
        })
        .collect()
}

/// Noise draws per evaluation record in the simulated figures: one draw leaves about a tenth
/// of a point of sampling error on 2,000 records, which is the size of the differences the
/// figures are read for.
const SIM_DRAWS: usize = 4;

/// Float and quantized accuracy (or R^2), their agreement, the simulated encrypted agreement
/// and accuracy (classifiers, averaged over [`SIM_DRAWS`] noise draws per record) and, for
/// regressors, the error figures (the simulated ones from the first draw).
fn report(
    mlp: &Mlp,
    server: &MlpServer,
    client: &MlpClient,
    eval: &Dataset,
    evaluated_on: &str,
    columns_of: &dyn Fn(&Dataset, usize) -> Vec<u64>,
    params: ParamSet,
) -> (CompileReport, f64, Option<f64>, Option<RegressionErrors>) {
    use fhe_batch_core::model::ClientFamily;
    let f = mlp.n_features;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (mut float_ok, mut quant_ok, mut agree, mut sim_agree) = (0usize, 0usize, 0usize, 0usize);
    let mut sim_ok = 0usize;
    let (mut pred_f, mut pred_q, mut pred_s) = (Vec::new(), Vec::new(), Vec::new());
    let records = eval.len();
    for i in 0..records {
        let xf: Vec<f32> = eval.x[i * f..(i + 1) * f]
            .iter()
            .map(|&v| v as f32)
            .collect();
        let fp = mlp.finish(mlp.raw_scores(&xf));
        let cols = columns_of(eval, i);
        let q = client.predict(&server.eval_plain(&cols));
        let sims: Vec<_> = (0..SIM_DRAWS)
            .map(|_| client.predict(&simulate_scores(server, &cols, params, &mut rng)))
            .collect();
        match &eval.y {
            Target::Classes { names, idx } => {
                let truth = &names[idx[i]];
                let float_label = fp.label.as_ref().and_then(|l| {
                    // The float model names classes as the ONNX file does; map through position.
                    let OnnxTask::Classifier { labels } = &mlp.task else {
                        return None;
                    };
                    labels
                        .iter()
                        .position(|m| m == l)
                        .map(|k| client.labels[k].clone())
                });
                float_ok += usize::from(float_label.as_deref() == Some(truth.as_str()));
                quant_ok += usize::from(&q.label == truth);
                agree += usize::from(float_label.as_deref() == Some(q.label.as_str()));
                sim_agree += sims.iter().filter(|s| s.class == q.class).count();
                sim_ok += sims.iter().filter(|s| &s.label == truth).count();
            }
            Target::Values(v) => {
                let (yf, yq, ys) = (fp.scores[0] as f64, q.scores[0], sims[0].scores[0]);
                pred_f.push(yf);
                pred_q.push(yq);
                pred_s.push(ys);
                let tol = 0.01 * (eval_range(v)).max(1e-12);
                agree += usize::from((yq - yf).abs() <= tol);
                sim_agree += sims
                    .iter()
                    .filter(|s| (s.scores[0] - yq).abs() <= tol)
                    .count();
            }
        }
    }
    let r = records.max(1) as f64;
    let errors = match &eval.y {
        Target::Values(v) => Some(RegressionErrors {
            records,
            float: ErrorFigures::of(&pred_f, v),
            quantized: ErrorFigures::of(&pred_q, v),
            encrypted_simulated: Some(ErrorFigures::of(&pred_s, v)),
            agreement: crate::metrics::regression_agreement(&pred_f, &pred_q, v),
        }),
        Target::Classes { .. } => None,
    };
    let (float_score, quantized_score) = match &errors {
        None => (float_ok as f64 / r, quant_ok as f64 / r),
        Some(e) => (e.float.r2, e.quantized.r2),
    };
    (
        CompileReport {
            evaluated_on: evaluated_on.to_string(),
            records,
            float_score,
            quantized_score,
            agreement: agree as f64 / r,
        },
        sim_agree as f64 / (r * SIM_DRAWS as f64),
        errors
            .is_none()
            .then_some(sim_ok as f64 / (r * SIM_DRAWS as f64)),
        errors,
    )
}

fn eval_range(v: &[f64]) -> f64 {
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    hi - lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// Squared error `d^T G d` of integer weights against the target.
    fn error(gram: &[f64], step: &[f64], target: &[f64], w: &[i64]) -> f64 {
        let m = step.len();
        let d: Vec<f64> = (0..m).map(|j| w[j] as f64 * step[j] - target[j]).collect();
        (0..m)
            .map(|j| (0..m).map(|k| d[j] * gram[j * m + k] * d[k]).sum::<f64>())
            .sum()
    }

    /// Steps, targets and their nearest integer weights for `m` weights, with the Gram matrix
    /// of `acts` (records x `m` activations of ReLUs clamped to `[0, 4]`).
    fn rounding_case(
        rng: &mut impl Rng,
        m: usize,
        acts: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<i64>) {
        let clamps: Vec<Clamp> = (0..m)
            .map(|_| Clamp::new(Activation::Relu, -1.0, 4.0))
            .collect();
        let gram = centred_gram(acts, &clamps);
        let step: Vec<f64> = (0..m).map(|_| rng.gen_range(0.05..0.3)).collect();
        let target: Vec<f64> = (0..m).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let nearest = target
            .iter()
            .zip(&step)
            .map(|(t, s)| (t / s).round() as i64)
            .collect();
        (gram, step, target, nearest)
    }

    /// Rounding together never does worse than rounding each weight to its nearest integer,
    /// keeps every weight within one step of its exact value (and within the cap), and on
    /// correlated activations does strictly better.
    #[test]
    fn weights_rounded_together_beat_nearest_rounding() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut better = 0;
        for _ in 0..50 {
            let m = rng.gen_range(2..12);
            // Activations of 200 records, correlated through a shared component.
            let acts: Vec<f64> = (0..200)
                .flat_map(|_| {
                    let shared: f64 = rng.r#gen::<f64>() * 2.0;
                    (0..m)
                        .map(|_| (shared + rng.r#gen::<f64>()).min(4.0))
                        .collect::<Vec<_>>()
                })
                .collect();
            let (gram, step, target, nearest) = rounding_case(&mut rng, m, &acts);
            let cap = 7;
            let mut w = nearest.clone();
            refine_rounding(&gram, &step, &target, &mut w, cap, 0.0);
            let (before, after) = (
                error(&gram, &step, &target, &nearest),
                error(&gram, &step, &target, &w),
            );
            assert!(after <= before + 1e-9, "{after} > {before}");
            for j in 0..m {
                let exact = target[j] / step[j];
                assert!((w[j] as f64 - exact).abs() < 1.0, "{} vs {exact}", w[j]);
                assert!(w[j].abs() <= cap.max(exact.abs().ceil() as i64));
            }
            better += usize::from(after < before * 0.999);
        }
        assert!(better >= 10, "rounding together helped on {better} of 50");
    }

    /// With the noise each unit of weight multiplies counted, rounding lowers the expected
    /// error (rounding plus noise) to at most nearest rounding's, and where noise costs more
    /// than rounding, it rounds towards zero.
    #[test]
    fn noise_aware_rounding_trades_rounding_error_against_noise() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut shrunk = 0;
        for _ in 0..50 {
            let m = rng.gen_range(2..12);
            let acts: Vec<f64> = (0..200 * m).map(|_| rng.r#gen::<f64>() * 4.0).collect();
            let (gram, step, target, nearest) = rounding_case(&mut rng, m, &acts);
            let noise = rng.gen_range(0.0..4.0);
            let expected = |w: &[i64]| {
                error(&gram, &step, &target, w)
                    + noise * w.iter().map(|&v| (v * v) as f64).sum::<f64>()
            };
            let mut w = nearest.clone();
            refine_rounding(&gram, &step, &target, &mut w, 7, noise);
            assert!(expected(&w) <= expected(&nearest) + 1e-9);
            let mut quiet = nearest.clone();
            refine_rounding(&gram, &step, &target, &mut quiet, 7, 0.0);
            for j in 0..m {
                assert!((w[j] as f64 - target[j] / step[j]).abs() < 1.0);
            }
            shrunk += usize::from(
                w.iter().map(|v| v * v).sum::<i64>() < quiet.iter().map(|v| v * v).sum::<i64>(),
            );
        }
        assert!(shrunk >= 10, "noise shrank the weights on {shrunk} of 50");
    }
}
