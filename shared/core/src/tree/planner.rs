//! The planner: from a quantized ensemble ([`TreeModel`]) to its bootstrap plan (server) and
//! slot readout (client). Every pair of sibling leaves becomes one bootstrap on
//! `u = 2 * (sum of the parent's path conditions) + (the parent's condition)`.

use super::ir::{QNode, QTree, TreeModel};
use super::noise::BootstrapNoise;
use super::plan::{ForestPlan, Lut, PlanError, Program};
use super::readout::SlotReadout;
use crate::params::ParamSet;
use std::collections::BTreeMap;

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

/// Works out the layout for trees with `n_outputs` score outputs, bootstrapped under `params`.
pub fn plan_layout(
    trees: &[QTree],
    n_outputs: usize,
    params: ParamSet,
) -> Result<Layout, PlanError> {
    let noise = BootstrapNoise::of(params);
    let inputs = noise.pbs_input_values;
    let shapes: Vec<Vec<Shape>> = trees.iter().map(tree_shapes).collect();
    let max_u = shapes
        .iter()
        .flatten()
        .flat_map(|s| s.fires.iter().map(|f| f.0))
        .max()
        .unwrap_or(0);
    if max_u >= inputs {
        return Err(PlanError::Malformed(format!(
            "a tree is deeper than 8 levels (a bootstrap input would reach {max_u}); at most 8 are supported"
        )));
    }
    let functions: u8 = if max_u < inputs / 2 { 2 } else { 1 };
    let digits: u8 = if n_outputs == 1 && functions == 2 {
        2
    } else {
        1
    };
    let per_shape = (n_outputs * digits as usize).div_ceil(functions as usize);
    let n_shapes: usize = shapes.iter().map(Vec::len).sum();
    let active_trees = shapes.iter().filter(|s| !s.is_empty()).count().max(1) as u64;
    let slot_bits = noise.slot_bits_for(n_shapes.max(1)).min(40);
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

/// Compiles a quantized ensemble into its bootstrap plan (server) and slot readout (client),
/// and proves the plan under `params`.
/// `eval_plain(bits) == readout.scores(plan.eval_slots(bits))` for every bit pattern.
pub fn build_plan(
    model: &TreeModel,
    params: ParamSet,
) -> Result<(ForestPlan, SlotReadout), PlanError> {
    let layout = plan_layout(&model.trees, model.n_outputs as usize, params)?;
    let outputs = model.n_outputs as usize;
    let input_values =
        (BootstrapNoise::of(params).pbs_input_values / layout.functions as u32) as usize;
    let mut offsets = vec![0i64; outputs];
    let mut programs = Vec::new();
    for (ti, t) in model.trees.iter().enumerate() {
        let mins = leaf_minimums(ti, t, outputs, &layout)?;
        for (offset, m) in offsets.iter_mut().zip(&mins) {
            *offset += m;
        }
        for shape in tree_shapes(t) {
            let luts = shape_luts(t, &shape, &mins, &layout, input_values);
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
        thermometer_bits: model.thresholds.len() as u32,
        functions: layout.functions,
        programs,
        score_slots: (outputs * layout.digits as usize) as u32,
        slot_bits: layout.slot_bits,
    };
    plan.validate(params)?;
    Ok((plan, slot_readout(outputs, &layout, offsets)))
}

/// Per output, the smallest leaf value of tree `ti` (its lookup tables carry `value - min`);
/// refuses a tree whose leaves spread wider than the layout allows.
fn leaf_minimums(
    ti: usize,
    t: &QTree,
    outputs: usize,
    layout: &Layout,
) -> Result<Vec<i64>, PlanError> {
    let leaves: Vec<&[i64]> = t.leaf_values().collect();
    let mut mins = Vec::with_capacity(outputs);
    for o in 0..outputs {
        let min = leaves.iter().map(|v| v[o]).min().unwrap_or(0);
        let spread = leaves.iter().map(|v| v[o] - min).max().unwrap_or(0);
        if spread as u64 > layout.leaf_range {
            return Err(PlanError::Malformed(format!(
                "tree {ti}: output {o}'s leaves spread over {spread}, the layout allows {}",
                layout.leaf_range
            )));
        }
        mins.push(min);
    }
    Ok(mins)
}

/// The lookup tables of one bootstrap shape: per output and digit, the (shifted) value of the
/// leaf that fires at each input `u`.
fn shape_luts(
    t: &QTree,
    shape: &Shape,
    mins: &[i64],
    layout: &Layout,
    input_values: usize,
) -> Vec<Lut> {
    let d = layout.digits as usize;
    let mut luts = Vec::with_capacity(mins.len() * d);
    for (o, min) in mins.iter().enumerate() {
        for digit in 0..d {
            let mut table = vec![0u64; input_values];
            for &(u, leaf) in &shape.fires {
                let v = (t.values_at(leaf)[o] - min) as u64;
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
    luts
}

/// The client's readout: output `o`'s score is `offset + low digit + base * high digit`.
fn slot_readout(outputs: usize, layout: &Layout, offsets: Vec<i64>) -> SlotReadout {
    let d = layout.digits as usize;
    let weight = |digit: usize| {
        if digit == 0 {
            1
        } else {
            layout.digit_base as i64
        }
    };
    SlotReadout {
        slots: (0..outputs)
            .map(|o| {
                (0..d)
                    .map(|digit| ((o * d + digit) as u32, weight(digit)))
                    .collect()
            })
            .collect(),
        offsets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::ir::Threshold;
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
            let (plan, readout) = build_plan(&model, ParamSet::Glwe2048TUniform17).unwrap();
            plan.validate(ParamSet::Glwe2048TUniform17).unwrap();
            for pattern in 0..(1u32 << bits) {
                let b: Vec<bool> = (0..bits).map(|j| pattern >> j & 1 == 1).collect();
                let slots = plan.eval_slots(&b);
                prop_assert!(slots.iter().all(|&s| s < 1 << plan.slot_bits));
                prop_assert_eq!(readout.scores(&slots), model.eval_plain(&b));
            }
        }
    }
}
