//! Tree ensembles in the form the encrypted evaluation works on.
//!
//! The client does the comparisons in the clear, on its own machine: for every distinct
//! threshold the ensemble uses it sends one *thermometer bit* `[x_f > t]` (or `[x_f >= t]`),
//! so features need no quantization. The server only combines bits: a branch goes to its `yes`
//! child when its bit equals `yes_when`. Leaves carry integer values (one per output) at a
//! common scale; the integer reference [`TreeModel::eval_plain`] is what decryption must give.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One comparison the client evaluates: bit = `x[feature] > value`, or `>=` when `inclusive`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    pub feature: u32,
    pub value: f32,
    pub inclusive: bool,
}

impl Threshold {
    pub fn bit(&self, x: &[f32]) -> bool {
        let v = x[self.feature as usize];
        if self.inclusive {
            v >= self.value
        } else {
            v > self.value
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QNode {
    /// Goes to `yes` when thermometer bit `bit` equals `yes_when`.
    Branch {
        bit: u32,
        yes_when: bool,
        yes: u32,
        no: u32,
    },
    /// One integer per output.
    Leaf { values: Vec<i64> },
}

/// A tree; node 0 is the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QTree {
    pub nodes: Vec<QNode>,
}

impl QTree {
    /// The leaf values reached from thermometer bits.
    pub fn leaf(&self, bits: &[bool]) -> &[i64] {
        let mut i = 0usize;
        loop {
            match &self.nodes[i] {
                QNode::Leaf { values } => return values,
                QNode::Branch {
                    bit,
                    yes_when,
                    yes,
                    no,
                } => {
                    i = if bits[*bit as usize] == *yes_when {
                        *yes
                    } else {
                        *no
                    } as usize
                }
            }
        }
    }

    pub fn depth(&self) -> usize {
        fn walk(t: &QTree, i: usize) -> usize {
            match &t.nodes[i] {
                QNode::Leaf { .. } => 0,
                QNode::Branch { yes, no, .. } => {
                    1 + walk(t, *yes as usize).max(walk(t, *no as usize))
                }
            }
        }
        walk(self, 0)
    }
}

/// A quantized tree ensemble: thresholds for the client, trees with integer leaves for the
/// server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeModel {
    pub n_features: u32,
    pub n_outputs: u32,
    pub thresholds: Vec<Threshold>,
    pub trees: Vec<QTree>,
    /// Bits of a leaf value, sign included.
    pub leaf_bits: u8,
    /// A float score is `sum of leaf integers * scale` (before base values).
    pub scale: f64,
}

impl TreeModel {
    /// The client's encoding of one record.
    pub fn bits(&self, x: &[f32]) -> Vec<bool> {
        self.thresholds.iter().map(|t| t.bit(x)).collect()
    }

    /// The integer reference: per output, the sum over trees of the reached leaves' values.
    pub fn eval_plain(&self, bits: &[bool]) -> Vec<i64> {
        let mut out = vec![0i64; self.n_outputs as usize];
        for t in &self.trees {
            for (o, v) in out.iter_mut().zip(t.leaf(bits)) {
                *o += v;
            }
        }
        out
    }

    pub fn max_depth(&self) -> usize {
        self.trees.iter().map(QTree::depth).max().unwrap_or(0)
    }

    /// Structural checks: indices in range, every node reached once from the root, leaf
    /// values inside `leaf_bits`.
    pub fn validate(&self) -> Result<(), String> {
        let limit = 1i64 << (self.leaf_bits.clamp(2, 32) - 1);
        for (ti, t) in self.trees.iter().enumerate() {
            let mut seen = vec![false; t.nodes.len()];
            let mut stack = vec![0usize];
            while let Some(i) = stack.pop() {
                let slot = seen
                    .get_mut(i)
                    .ok_or_else(|| format!("tree {ti}: node {i} out of range"))?;
                if std::mem::replace(slot, true) {
                    return Err(format!("tree {ti}: node {i} reached twice"));
                }
                match &t.nodes[i] {
                    QNode::Branch { bit, yes, no, .. } => {
                        if *bit as usize >= self.thresholds.len() {
                            return Err(format!("tree {ti}: bit {bit} out of range"));
                        }
                        stack.push(*yes as usize);
                        stack.push(*no as usize);
                    }
                    QNode::Leaf { values } => {
                        if values.len() != self.n_outputs as usize
                            || values.iter().any(|v| v.abs() >= limit)
                        {
                            return Err(format!("tree {ti}: leaf {i} out of range"));
                        }
                    }
                }
            }
            if seen.iter().any(|s| !s) {
                return Err(format!("tree {ti}: unreachable nodes"));
            }
        }
        if self
            .thresholds
            .iter()
            .any(|t| t.feature >= self.n_features || t.value.is_nan())
        {
            return Err("a threshold names a missing feature or is NaN".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The bootstrap plan: what the server evaluates, and its noise budget.

/// log2 of the variance (on the 2^64 torus) of a fresh GLWE sample of the parameter set:
/// TUniform(17), `(2^(2*17+1) + 1) / 6`.
pub const FRESH_VARIANCE_LOG2: f64 = 32.415_037_5;
/// log2 of the variance of a programmable bootstrap's output (tfhe 1.8.2's
/// `pbs_variance_132_bits_security_tuniform_fft_mul` for n = 918, k = 1, N = 2048,
/// base 2^23, 1 level, 53-bit mantissa). `fhe_batch_fhe` re-derives it from tfhe in a test.
pub const PBS_OUTPUT_VARIANCE_LOG2: f64 = 98.346;
/// log2 of the variance the result packing adds to each slot (tfhe's
/// `packing_keyswitch_additive_variance_132_bits_security_tuniform`, input n = 2048, output
/// k = 1, N = 2048, base 2^22, 1 level, 2048 ciphertexts packed). Re-derived in a test.
pub const PACKING_VARIANCE_LOG2: f64 = 94.896;
/// Standard deviations between a slot's noise and half a decoding step: a Gaussian tail below
/// 2^-128 (`P(|Z| > 13.2) < 2^-128`).
pub const TAIL_SIGMAS: f64 = 13.2;
/// The largest sum of squared coefficients a bootstrap input may carry, in units of the
/// bootstrap output variance: the parameter set was analysed for KS inputs of 2-norm 5
/// (`MaxNoiseLevel(5)`, p-fail 2^-129.58).
pub const MAX_INPUT_NORM2: f64 = 25.0;
/// Input values a bootstrap accepts: `u` in `[0, 16)` (2 message bits, 2 carry bits).
pub const PBS_INPUT_VALUES: u32 = 16;
/// Bootstraps per second assumed for one worker when sizing chunks: what 2 vCPUs do (measured,
/// docs/BENCHMARKS.md).
pub const WORKER_PBS_PER_SECOND: f64 = 60.0;
/// Seconds of bootstrapping a chunk is sized for, well inside the Lambda limit of 900 s.
pub const TARGET_CHUNK_SECONDS: f64 = 300.0;
/// Longest estimated chunk time ingest accepts.
pub const MAX_CHUNK_SECONDS: f64 = 720.0;

/// Records per chunk for a model costing `pbs_per_record` bootstraps, so one chunk takes about
/// [`TARGET_CHUNK_SECONDS`] on a worker; at most `n` (the slots of one GLWE).
pub fn records_per_chunk(pbs_per_record: usize, n: usize) -> usize {
    if pbs_per_record == 0 {
        return n;
    }
    let r = (TARGET_CHUNK_SECONDS * WORKER_PBS_PER_SECOND / pbs_per_record as f64).floor();
    (r as usize).clamp(1, n)
}

/// One lookup table of a bootstrap: its outputs, indexed by the input value `u`, are added to
/// score slot `slot` (encoded at the plan's output step).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lut {
    pub slot: u32,
    pub table: Vec<u64>,
}

/// One programmable bootstrap: `u = constant + sum(coefficient * bit)` computed on whole
/// columns, then up to [`ForestPlan::functions`] lookup tables applied to `u` at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    /// The tree this bootstrap reports a leaf of. Within a tree at most one bootstrap sees its
    /// firing input for any record (they test disjoint root-to-leaf paths), so a slot's largest
    /// sum adds one largest entry per tree.
    pub tree: u32,
    pub terms: Vec<(u32, i32)>,
    pub constant: i32,
    pub luts: Vec<Lut>,
}

impl Program {
    /// Smallest and largest `u` over all bit patterns.
    pub fn u_range(&self) -> (i64, i64) {
        let mut lo = self.constant as i64;
        let mut hi = self.constant as i64;
        for &(_, c) in &self.terms {
            if c < 0 {
                lo += c as i64;
            } else {
                hi += c as i64;
            }
        }
        (lo, hi)
    }

    /// Sum of squared coefficients (the input noise in units of a fresh sample's variance).
    pub fn norm2(&self) -> u64 {
        self.terms
            .iter()
            .map(|&(_, c)| (c as i64 * c as i64) as u64)
            .sum()
    }

    pub fn u(&self, bits: &[bool]) -> i64 {
        self.terms
            .iter()
            .fold(self.constant as i64, |acc, &(b, c)| {
                acc + c as i64 * i64::from(bits[b as usize])
            })
    }
}

/// The server's part of a compiled ensemble: the bootstraps, and how wide each score slot is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForestPlan {
    /// Thermometer bits (input columns) per record.
    pub n_bits: u32,
    /// Lookup tables per bootstrap (1, or 2 with tfhe's many-LUT when every `u < 8`).
    pub functions: u8,
    pub programs: Vec<Program>,
    /// Score slots per record.
    pub n_slots: u32,
    /// Slot sums are decoded from the top `slot_bits` bits (output step `2^(64 - slot_bits)`).
    pub slot_bits: u8,
}

/// How the client turns decrypted slot sums back into per-output integer scores:
/// `score[o] = offset[o] + sum(weight * slot)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotReadout {
    pub slots: Vec<Vec<(u32, i64)>>,
    pub offsets: Vec<i64>,
}

impl SlotReadout {
    pub fn scores(&self, slot_sums: &[u64]) -> Vec<i64> {
        self.slots
            .iter()
            .zip(&self.offsets)
            .map(|(terms, &off)| {
                terms
                    .iter()
                    .fold(off, |acc, &(s, w)| acc + w * slot_sums[s as usize] as i64)
            })
            .collect()
    }
}

/// Why a plan cannot be evaluated within the parameter set's guarantees.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("bootstrap {program}: input u ranges over [{lo}, {hi}], outside [0, {limit})")]
    InputRange {
        program: usize,
        lo: i64,
        hi: i64,
        limit: u32,
    },
    #[error("bootstrap {program}: input noise {norm2} x fresh variance exceeds the analysed bound")]
    InputNoise { program: usize, norm2: u64 },
    #[error(
        "slot {slot}: its sum ranges up to {max} over {outputs} bootstrap outputs, which does not decode exactly at {bits} bits (noise 2^{noise_log2:.1} needs half a step of 2^{need_log2:.1})"
    )]
    Slot {
        slot: usize,
        max: u64,
        outputs: usize,
        bits: u8,
        noise_log2: f64,
        need_log2: f64,
    },
    #[error("plan is malformed: {0}")]
    Malformed(String),
}

/// log2 of the standard deviation of a slot summing `outputs` bootstrap outputs, after packing.
pub fn slot_sigma_log2(outputs: usize) -> f64 {
    let v = outputs as f64 * PBS_OUTPUT_VARIANCE_LOG2.exp2() + PACKING_VARIANCE_LOG2.exp2();
    v.log2() / 2.0
}

/// The widest slot encoding whose decoding stays exact with probability `>= 1 - 2^-128` when
/// a slot sums `outputs` bootstrap outputs: `TAIL_SIGMAS * sigma < 2^(63 - bits)`.
pub fn slot_bits_for(outputs: usize) -> u8 {
    let need = slot_sigma_log2(outputs) + TAIL_SIGMAS.log2();
    (63.0 - need).floor().clamp(1.0, 62.0) as u8
}

impl ForestPlan {
    /// Inputs a lookup table covers: `16 / functions`.
    pub fn input_values(&self) -> u32 {
        PBS_INPUT_VALUES / self.functions.max(1) as u32
    }

    pub fn pbs_per_record(&self) -> usize {
        self.programs.len()
    }

    /// Bootstrap outputs added into each slot.
    pub fn outputs_per_slot(&self) -> Vec<usize> {
        let mut m = vec![0usize; self.n_slots as usize];
        for p in &self.programs {
            for l in &p.luts {
                if let Some(c) = m.get_mut(l.slot as usize) {
                    *c += 1;
                }
            }
        }
        m
    }

    /// The integer reference of the encrypted evaluation: every slot's sum for one record's
    /// thermometer bits (before reduction mod `2^slot_bits`).
    pub fn eval_slots(&self, bits: &[bool]) -> Vec<u64> {
        let mut s = vec![0u64; self.n_slots as usize];
        for p in &self.programs {
            let u = p.u(bits) as usize;
            for l in &p.luts {
                s[l.slot as usize] += l.table[u];
            }
        }
        s
    }

    /// Proves the plan evaluates exactly: every bootstrap input lies in the lookup table's
    /// range for every bit pattern and carries at most the analysed noise; every slot's sum fits
    /// `slot_bits` and decodes with the noise of its bootstrap outputs and the packing.
    pub fn validate(&self) -> Result<(), PlanError> {
        if !(1..=2).contains(&self.functions) || self.n_slots == 0 || self.n_bits == 0 {
            return Err(PlanError::Malformed(format!(
                "{} functions, {} slots, {} bits",
                self.functions, self.n_slots, self.n_bits
            )));
        }
        let limit = self.input_values();
        let fresh_in_nominal = (FRESH_VARIANCE_LOG2 - PBS_OUTPUT_VARIANCE_LOG2).exp2();
        // Per slot: tree -> its largest entry.
        let mut per_tree: Vec<BTreeMap<u32, u64>> = vec![BTreeMap::new(); self.n_slots as usize];
        for (i, p) in self.programs.iter().enumerate() {
            let (lo, hi) = p.u_range();
            if lo < 0 || hi >= limit as i64 {
                return Err(PlanError::InputRange {
                    program: i,
                    lo,
                    hi,
                    limit,
                });
            }
            if p.norm2() as f64 * fresh_in_nominal > MAX_INPUT_NORM2 {
                return Err(PlanError::InputNoise {
                    program: i,
                    norm2: p.norm2(),
                });
            }
            if p.luts.is_empty()
                || p.luts.len() > self.functions as usize
                || p.terms.iter().any(|&(b, _)| b >= self.n_bits)
            {
                return Err(PlanError::Malformed(format!("bootstrap {i}")));
            }
            for l in &p.luts {
                let slot = per_tree
                    .get_mut(l.slot as usize)
                    .ok_or_else(|| PlanError::Malformed(format!("bootstrap {i}: slot")))?;
                if l.table.len() != limit as usize {
                    return Err(PlanError::Malformed(format!("bootstrap {i}: table length")));
                }
                let top = l.table[lo as usize..=hi as usize]
                    .iter()
                    .max()
                    .copied()
                    .unwrap_or(0);
                let e = slot.entry(p.tree).or_insert(0);
                *e = (*e).max(top);
            }
        }
        let max: Vec<u64> = per_tree
            .iter()
            .map(|m| m.values().fold(0u64, |a, &v| a.saturating_add(v)))
            .collect();
        let outputs = self.outputs_per_slot();
        for (slot, (&m, &top)) in outputs.iter().zip(&max).enumerate() {
            let noise_log2 = slot_sigma_log2(m) + TAIL_SIGMAS.log2();
            let need_log2 = 63.0 - self.slot_bits as f64;
            if self.slot_bits == 0
                || self.slot_bits > 62
                || top >= 1u64 << self.slot_bits
                || noise_log2 >= need_log2
            {
                return Err(PlanError::Slot {
                    slot,
                    max: top,
                    outputs: m,
                    bits: self.slot_bits,
                    noise_log2,
                    need_log2,
                });
            }
        }
        Ok(())
    }
}

/// A bootstrap's linear form and which leaf it reports for which input value.
#[derive(Debug, Clone)]
struct Shape {
    terms: Vec<(u32, i32)>,
    constant: i32,
    /// `(u, leaf node)`: the leaf reached when the input equals `u`.
    fires: Vec<(u32, usize)>,
}

/// One condition on a path: `coefficient * bit + constant` is 1 when the record goes this way.
type Cond = (u32, i32, i32);

fn shape_of(path: &[Cond], weight_last: Option<i32>, fires: Vec<(u32, usize)>) -> Shape {
    // u = 2 * (sum of path conditions) + last condition (pairs), or the plain sum (lone leaves).
    let mut coef: BTreeMap<u32, i32> = BTreeMap::new();
    let mut constant = 0i32;
    let n = path.len();
    for (i, &(bit, c, k)) in path.iter().enumerate() {
        let w = match weight_last {
            Some(last) if i + 1 == n => last,
            Some(_) => 2,
            None => 1,
        };
        *coef.entry(bit).or_insert(0) += w * c;
        constant += w * k;
    }
    Shape {
        terms: coef.into_iter().filter(|&(_, c)| c != 0).collect(),
        constant,
        fires,
    }
}

fn tree_shapes(t: &QTree) -> Vec<Shape> {
    fn cond(bit: u32, want: bool) -> Cond {
        if want { (bit, 1, 0) } else { (bit, -1, 1) }
    }
    fn walk(t: &QTree, i: usize, path: &mut Vec<Cond>, out: &mut Vec<Shape>) {
        let QNode::Branch {
            bit,
            yes_when,
            yes,
            no,
        } = &t.nodes[i]
        else {
            return;
        };
        let (yes, no) = (*yes as usize, *no as usize);
        let is_leaf = |j: usize| matches!(t.nodes[j], QNode::Leaf { .. });
        let h = path.len() as u32;
        if is_leaf(yes) && is_leaf(no) {
            path.push(cond(*bit, *yes_when));
            out.push(shape_of(path, Some(1), vec![(2 * h + 1, yes), (2 * h, no)]));
            path.pop();
            return;
        }
        for (child, want) in [(yes, *yes_when), (no, !*yes_when)] {
            path.push(cond(*bit, want));
            if is_leaf(child) {
                out.push(shape_of(path, None, vec![(h + 1, child)]));
            } else {
                walk(t, child, path, out);
            }
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(t, 0, &mut Vec::new(), &mut out);
    out
}

/// The encoding a model's leaves must fit, decided from the trees' structure alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub functions: u8,
    /// Score slots per output: 2 splits each leaf value into a low and a high digit, carried by
    /// the two lookup tables of one many-LUT bootstrap.
    pub digits: u8,
    pub digit_base: u64,
    pub slot_bits: u8,
    /// Largest spread (max - min) of one tree's leaf values for one output.
    pub leaf_range: u64,
    pub pbs_per_record: usize,
}

/// Largest leaf spread ever used (16 bits is far finer than any accuracy gain).
pub const MAX_LEAF_RANGE: u64 = (1 << 16) - 1;

/// Works out the layout for trees with `n_outputs` score outputs.
pub fn plan_layout(trees: &[QTree], n_outputs: usize) -> Result<Layout, PlanError> {
    let shapes: Vec<Vec<Shape>> = trees.iter().map(tree_shapes).collect();
    let max_u = shapes
        .iter()
        .flatten()
        .flat_map(|s| s.fires.iter().map(|f| f.0))
        .max()
        .unwrap_or(0);
    if max_u >= PBS_INPUT_VALUES {
        return Err(PlanError::Malformed(format!(
            "a tree is deeper than 8 levels (a bootstrap input would reach {max_u}); at most 8 are supported"
        )));
    }
    let functions: u8 = if max_u < PBS_INPUT_VALUES / 2 { 2 } else { 1 };
    let digits: u8 = if n_outputs == 1 && functions == 2 {
        2
    } else {
        1
    };
    let per_shape = (n_outputs * digits as usize).div_ceil(functions as usize);
    let n_shapes: usize = shapes.iter().map(Vec::len).sum();
    let active_trees = shapes.iter().filter(|s| !s.is_empty()).count().max(1) as u64;
    let slot_bits = slot_bits_for(n_shapes.max(1)).min(40);
    let top = (1u64 << slot_bits) - 1;
    let (digit_base, leaf_range) = if digits == 2 {
        let base = top / active_trees + 1;
        let high = top / active_trees;
        (base, (base * (high + 1) - 1).min(MAX_LEAF_RANGE))
    } else {
        (1, (top / active_trees).min(MAX_LEAF_RANGE))
    };
    if leaf_range == 0 {
        return Err(PlanError::Malformed(format!(
            "{active_trees} trees leave no room for leaf values in {slot_bits}-bit score slots"
        )));
    }
    Ok(Layout {
        functions,
        digits,
        digit_base,
        slot_bits,
        leaf_range,
        pbs_per_record: n_shapes * per_shape,
    })
}

/// Compiles a quantized ensemble into its bootstrap plan (server) and slot readout (client).
/// `eval_plain(bits) == readout.scores(plan.eval_slots(bits))` for every bit pattern.
pub fn build_plan(model: &TreeModel) -> Result<(ForestPlan, SlotReadout), PlanError> {
    let layout = plan_layout(&model.trees, model.n_outputs as usize)?;
    let outputs = model.n_outputs as usize;
    let d = layout.digits as usize;
    let input_values = (PBS_INPUT_VALUES / layout.functions as u32) as usize;
    let mut offsets = vec![0i64; outputs];
    let mut programs = Vec::new();
    for (ti, t) in model.trees.iter().enumerate() {
        let leaves: Vec<&Vec<i64>> = t
            .nodes
            .iter()
            .filter_map(|n| match n {
                QNode::Leaf { values } => Some(values),
                _ => None,
            })
            .collect();
        let mins: Vec<i64> = (0..outputs)
            .map(|o| leaves.iter().map(|v| v[o]).min().unwrap_or(0))
            .collect();
        for (o, m) in mins.iter().enumerate() {
            let spread = leaves.iter().map(|v| v[o] - m).max().unwrap_or(0);
            if spread as u64 > layout.leaf_range {
                return Err(PlanError::Malformed(format!(
                    "tree {ti}: output {o}'s leaves spread over {spread}, the layout allows {}",
                    layout.leaf_range
                )));
            }
            offsets[o] += m;
        }
        for shape in tree_shapes(t) {
            let mut luts = Vec::with_capacity(outputs * d);
            for (o, min) in mins.iter().enumerate() {
                for digit in 0..d {
                    let mut table = vec![0u64; input_values];
                    for &(u, leaf) in &shape.fires {
                        let QNode::Leaf { values } = &t.nodes[leaf] else {
                            unreachable!("fires name leaves")
                        };
                        let v = (values[o] - min) as u64;
                        table[u as usize] = match (d, digit) {
                            (1, _) => v,
                            (_, 0) => v % layout.digit_base,
                            _ => v / layout.digit_base,
                        };
                    }
                    luts.push(Lut {
                        slot: (o * d + digit) as u32,
                        table,
                    });
                }
            }
            for group in luts.chunks(layout.functions as usize) {
                programs.push(Program {
                    tree: ti as u32,
                    terms: shape.terms.clone(),
                    constant: shape.constant,
                    luts: group.to_vec(),
                });
            }
        }
    }
    let plan = ForestPlan {
        n_bits: model.thresholds.len() as u32,
        functions: layout.functions,
        programs,
        n_slots: (outputs * d) as u32,
        slot_bits: layout.slot_bits,
    };
    plan.validate()?;
    let readout = SlotReadout {
        slots: (0..outputs)
            .map(|o| {
                (0..d)
                    .map(|digit| {
                        let w = if digit == 0 {
                            1
                        } else {
                            layout.digit_base as i64
                        };
                        ((o * d + digit) as u32, w)
                    })
                    .collect()
            })
            .collect(),
        offsets,
    };
    Ok((plan, readout))
}

// ---------------------------------------------------------------------------------------------
// Readout: from summed scores to a prediction, with ONNX Runtime's rules.

/// The transform applied to raw scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostTransform {
    None,
    Logistic,
    Softmax,
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Applies `post` in place (f32, as ONNX Runtime does).
pub fn transform(post: PostTransform, s: &mut [f32]) {
    match post {
        PostTransform::None => {}
        PostTransform::Logistic => s.iter_mut().for_each(|v| *v = sigmoid(*v)),
        PostTransform::Softmax => {
            let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = s
                .iter_mut()
                .map(|v| {
                    *v = (*v - m).exp();
                    *v
                })
                .sum();
            s.iter_mut().for_each(|v| *v /= sum);
        }
    }
}

/// Index of the largest score; ties go to the lowest index.
pub fn argmax_f32(s: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in s.iter().enumerate() {
        if *v > s[best] {
            best = i;
        }
    }
    best
}

/// What the client needs to turn an ensemble's summed scores into a prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readout {
    /// Class labels in the model's order; empty for a regressor.
    pub labels: Vec<String>,
    pub base_values: Vec<f32>,
    pub post: PostTransform,
    /// Every leaf weight is >= 0 (decides ONNX Runtime's binary label rule).
    pub weights_positive: bool,
}

impl Readout {
    /// Raw per-slot sums (before base values) to `(label, scores)`: base values, the binary
    /// single-score rule, the post-transform.
    pub fn finish(&self, mut s: Vec<f32>) -> (Option<String>, Vec<f32>) {
        for (v, b) in s.iter_mut().zip(&self.base_values) {
            *v += b;
        }
        if self.labels.is_empty() {
            transform(self.post, &mut s);
            return (None, s);
        }
        if self.labels.len() == 2 && s.len() == 1 {
            // One score for the positive class (ONNX Runtime's binary case).
            let v = s[0];
            let positive = if self.weights_positive && self.post == PostTransform::None {
                v > 0.5
            } else {
                v > 0.0
            };
            let scores = match self.post {
                PostTransform::None if self.weights_positive => vec![1.0 - v, v],
                PostTransform::None => vec![-v, v],
                _ => vec![1.0 - sigmoid(v), sigmoid(v)],
            };
            return (Some(self.labels[positive as usize].clone()), scores);
        }
        let label = self.labels[argmax_f32(&s)].clone();
        transform(self.post, &mut s);
        (Some(label), s)
    }
}

/// The client's part of a compiled ensemble: the comparisons it makes, how it reads the slots
/// back, and the readout. It holds no leaf values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForestClient {
    pub thresholds: Vec<Threshold>,
    pub slots: SlotReadout,
    /// A float score is `integer score * scale` (before base values).
    pub scale: f64,
    pub readout: Readout,
}

impl ForestClient {
    /// The client's encoding of one record: one 0/1 column per threshold.
    pub fn columns(&self, x: &[f64]) -> Vec<u64> {
        let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        self.thresholds
            .iter()
            .map(|t| u64::from(t.bit(&x)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A random tree from a stream of choices: depth <= `depth`, bits < `bits`.
    fn grow(
        choices: &mut impl Iterator<Item = u32>,
        nodes: &mut Vec<QNode>,
        depth: usize,
        bits: u32,
        outputs: usize,
    ) -> u32 {
        let i = nodes.len();
        let c = choices.next().unwrap_or(0);
        if depth == 0 || c.is_multiple_of(5) {
            let values = (0..outputs)
                .map(|o| (choices.next().unwrap_or(0) as i64 + o as i64) % 9 - 4)
                .collect();
            nodes.push(QNode::Leaf { values });
            return i as u32;
        }
        nodes.push(QNode::Leaf { values: vec![] });
        let yes = grow(choices, nodes, depth - 1, bits, outputs);
        let no = grow(choices, nodes, depth - 1, bits, outputs);
        nodes[i] = QNode::Branch {
            bit: c % bits,
            yes_when: c.is_multiple_of(2),
            yes,
            no,
        };
        i as u32
    }

    proptest! {
        /// For random trees (depth 1..=8, repeated bits on a path, 1..=3 outputs), every
        /// bootstrap input stays in range, the plan is proven, and on every bit pattern the
        /// slot sums read back to the integer reference exactly: one leaf fires per tree.
        #[test]
        fn plans_reproduce_the_reference_on_every_bit_pattern(
            choices in proptest::collection::vec(any::<u32>(), 64..400),
            trees in 1usize..4,
            depth in 1usize..=8,
            outputs in 1usize..=3,
        ) {
            let bits = 5u32;
            let mut it = choices.into_iter();
            let model = TreeModel {
                n_features: 1,
                n_outputs: outputs as u32,
                thresholds: (0..bits)
                    .map(|j| Threshold { feature: 0, value: j as f32, inclusive: false })
                    .collect(),
                trees: (0..trees)
                    .map(|_| {
                        let mut nodes = Vec::new();
                        grow(&mut it, &mut nodes, depth, bits, outputs);
                        QTree { nodes }
                    })
                    .collect(),
                leaf_bits: 8,
                scale: 1.0,
            };
            prop_assume!(model.trees.iter().any(|t| t.nodes.len() > 1));
            let (plan, readout) = build_plan(&model).unwrap();
            plan.validate().unwrap();
            for pattern in 0..(1u32 << bits) {
                let b: Vec<bool> = (0..bits).map(|j| pattern >> j & 1 == 1).collect();
                let slots = plan.eval_slots(&b);
                prop_assert!(slots.iter().all(|&s| s < 1 << plan.slot_bits));
                prop_assert_eq!(readout.scores(&slots), model.eval_plain(&b));
            }
        }
    }

    #[test]
    fn slot_widths_follow_the_noise() {
        // More summed bootstrap outputs, fewer exact bits.
        assert_eq!(slot_bits_for(7), 8);
        assert_eq!(slot_bits_for(137), 6);
        assert!(slot_bits_for(10_000) < slot_bits_for(100));
        assert_eq!(records_per_chunk(137, 2048), 131);
        assert_eq!(records_per_chunk(7, 2048), 2048);
        assert_eq!(records_per_chunk(1_000_000, 2048), 1);
    }

    #[test]
    fn plans_outside_the_proof_are_refused() {
        let lut = |slot| Lut {
            slot,
            table: vec![0; 8],
        };
        let mut plan = ForestPlan {
            n_bits: 2,
            functions: 2,
            programs: vec![Program {
                tree: 0,
                terms: vec![(0, 4), (1, 4)],
                constant: 0,
                luts: vec![lut(0)],
            }],
            n_slots: 1,
            slot_bits: 6,
        };
        // u reaches 8: outside a two-table bootstrap's inputs.
        assert!(matches!(plan.validate(), Err(PlanError::InputRange { .. })));
        plan.programs[0].terms = vec![(0, 1), (1, 1)];
        plan.validate().unwrap();
        // A slot wider than the noise allows for its bootstrap count.
        plan.slot_bits = 12;
        assert!(matches!(plan.validate(), Err(PlanError::Slot { .. })));
        plan.slot_bits = 6;
        // An input whose noise exceeds the analysed bound.
        plan.programs[0].terms = vec![(0, 1 << 30)];
        plan.programs[0].constant = -(1 << 30);
        assert!(plan.validate().is_err());
        // A table value that overflows the slot.
        plan.programs[0].terms = vec![(0, 1)];
        plan.programs[0].constant = 0;
        plan.programs[0].luts[0].table[1] = 64;
        assert!(matches!(plan.validate(), Err(PlanError::Slot { .. })));
    }
}
