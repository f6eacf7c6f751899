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
    let n = path.len();
    let conds: Vec<(Cond, i32)> = path
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let w = match weight_last {
                Some(last) if i + 1 == n => last,
                Some(_) => 2,
                None => 1,
            };
            (c, w)
        })
        .collect();
    weighted_shape(&conds, fires)
}

/// The condition that is 1 when the bit is `want`.
fn cond(bit: u32, want: bool) -> Cond {
    if want { (bit, 1, 0) } else { (bit, -1, 1) }
}

/// `sum(weight * condition)` as a shape reporting `fires`.
fn weighted_shape(conds: &[(Cond, i32)], fires: Vec<(u32, usize)>) -> Shape {
    let mut coef: BTreeMap<u32, i32> = BTreeMap::new();
    let mut constant = 0i32;
    for &((bit, c, k), w) in conds {
        *coef.entry(bit).or_insert(0) += w * c;
        constant += w * k;
    }
    Shape {
        terms: coef.into_iter().filter(|&(_, c)| c != 0).collect(),
        constant,
        fires,
    }
}

/// The bootstrap shapes of one tree: a pair of sibling leaves is one shape, a leaf whose
/// sibling is a branch is one shape, and with `merge` (a one-table bootstrap's input values):
/// - a leaf whose sibling branch ends in a pair of leaves is one shape with that pair (three
///   leaves, one bootstrap of `u` up to 15: `u = 4 * (sum of the parent's path conditions) +
///   2 * [towards the pair] + [the pair's condition]`; only the parent's full path reaches
///   `u >= 4 h`);
/// - a branch whose children are both pairs of leaves, at the root or one step below it, is
///   one shape (four leaves: `u = 8 * (path condition) + 4 * [towards the yes pair] + 2 * [the
///   yes pair's condition] + [the no pair's condition]`, up to 15). A depth-2 tree is one
///   bootstrap, a full depth-3 tree two.
fn tree_shapes(t: &QTree, merge: Option<u32>) -> Vec<Shape> {
    fn walk(t: &QTree, i: usize, merge: Option<u32>, path: &mut Vec<Cond>, out: &mut Vec<Shape>) {
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
        // A leaf beside a branch whose children are both leaves: one shape for the three.
        let pair_under = |j: usize| match &t.nodes[j] {
            QNode::Branch {
                bit,
                yes_when,
                yes,
                no,
            } if is_leaf(*yes as usize) && is_leaf(*no as usize) => {
                Some((*bit, *yes_when, *yes as usize, *no as usize))
            }
            _ => None,
        };
        // Two pairs of leaves under one branch, within one step of the root: one shape for
        // the four (`u = 8 * (path) + 4 * [towards yes] + 2 * [yes pair's condition] + [no
        // pair's condition]`, up to 15).
        if merge.is_some_and(|inputs| 8 * h + 7 < inputs)
            && let (Some((ab, ayes_when, ayes, ano)), Some((bb, byes_when, byes, bno))) =
                (pair_under(yes), pair_under(no))
        {
            let mut conds: Vec<(Cond, i32)> = path.iter().map(|&c| (c, 8)).collect();
            conds.push((cond(*bit, *yes_when), 4));
            conds.push((cond(ab, ayes_when), 2));
            conds.push((cond(bb, byes_when), 1));
            let base = 8 * h;
            out.push(weighted_shape(
                &conds,
                vec![
                    (base, bno),
                    (base + 1, byes),
                    (base + 2, bno),
                    (base + 3, byes),
                    (base + 4, ano),
                    (base + 5, ano),
                    (base + 6, ayes),
                    (base + 7, ayes),
                ],
            ));
            return;
        }
        if merge.is_some_and(|inputs| 4 * h + 3 < inputs) {
            for (leaf, branch, towards_branch) in [(yes, no, !*yes_when), (no, yes, *yes_when)] {
                if !is_leaf(leaf) {
                    continue;
                }
                let Some((qbit, qyes_when, qyes, qno)) = pair_under(branch) else {
                    continue;
                };
                let mut conds: Vec<(Cond, i32)> = path.iter().map(|&c| (c, 4)).collect();
                conds.push((cond(*bit, towards_branch), 2));
                conds.push((cond(qbit, qyes_when), 1));
                out.push(weighted_shape(
                    &conds,
                    vec![
                        (4 * h, leaf),
                        (4 * h + 1, leaf),
                        (4 * h + 2, qno),
                        (4 * h + 3, qyes),
                    ],
                ));
                return;
            }
        }
        for (child, want) in [(yes, *yes_when), (no, !*yes_when)] {
            path.push(cond(*bit, want));
            if is_leaf(child) {
                out.push(shape_of(path, None, vec![(h + 1, child)]));
            } else {
                walk(t, child, merge, path, out);
            }
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(t, 0, merge, &mut Vec::new(), &mut out);
    out
}

/// The encoding a model's leaves must fit, decided from the trees' structure and the leaf
/// resolution asked for.
///
/// Trees are partitioned into `groups`; group `g` sums its trees' bootstrap outputs into its own
/// score slots (`slots_per_group` of them: one per output, or a low and a high digit), and the
/// client adds the groups' decrypted sums ([`SlotReadout`]). One group is the single-slot
/// layout. More groups cost result bytes and packing keyswitches, never bootstraps: each slot
/// sums fewer trees (so each tree's leaves get a wider share of the slot) and fewer bootstrap
/// outputs (so less noise and wider slots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub functions: u8,
    /// Score slots per output and group: 2 splits each leaf value into a low and a high digit,
    /// carried by the two lookup tables of one many-LUT bootstrap.
    pub digits: u8,
    pub digit_base: u64,
    pub slot_bits: u8,
    /// Largest spread (max - min) of one tree's leaf values for one output.
    pub leaf_range: u64,
    pub pbs_per_record: usize,
    /// Tree groups, each with its own score slots.
    pub groups: usize,
    /// The group of each tree (a tree without bootstraps, a single leaf, is in group 0: its
    /// value is a constant of the readout).
    pub group_of: Vec<u32>,
    /// Largest number of trees in one group.
    pub trees_per_group: usize,
    /// Bootstrap outputs summed into the fullest slot (what its noise, and `slot_bits`, are
    /// decided from).
    pub outputs_per_slot: usize,
    /// Whether shapes are merged into one-table bootstraps of 16 inputs (a leaf beside a pair
    /// of leaves, two pairs under one branch, four stumps); chosen for single-output models
    /// when it saves bootstraps.
    pub merged: bool,
}

impl Layout {
    /// Score slots of one group: one per output and digit.
    pub fn slots_per_group(&self, n_outputs: usize) -> usize {
        n_outputs * self.digits as usize
    }

    /// Score slots per record.
    pub fn score_slots(&self, n_outputs: usize) -> usize {
        self.groups * self.slots_per_group(n_outputs)
    }

    /// The slot tree `tree`'s lookup tables for `output` and `digit` add to.
    pub fn slot(&self, tree: usize, n_outputs: usize, output: usize, digit: usize) -> u32 {
        let group = self.group_of.get(tree).copied().unwrap_or(0) as usize;
        (group * self.slots_per_group(n_outputs) + output * self.digits as usize + digit) as u32
    }
}

/// Largest leaf spread ever used (16 bits is far finer than any accuracy gain).
pub const MAX_LEAF_RANGE: u64 = (1 << 16) - 1;

/// A stump (one branch over two leaves, one bootstrap on its condition): its condition, 1
/// towards its yes leaf, and its yes and no leaves.
fn stump_of(t: &QTree) -> Option<(Cond, usize, usize)> {
    let Some(QNode::Branch {
        bit,
        yes_when,
        yes,
        no,
    }) = t.nodes.first()
    else {
        return None;
    };
    let (yes, no) = (*yes as usize, *no as usize);
    let leaf = |j: usize| matches!(t.nodes.get(j), Some(QNode::Leaf { .. }));
    (leaf(yes) && leaf(no)).then_some((cond(*bit, *yes_when), yes, no))
}

/// Stumps one bootstrap of `inputs` input values carries in a merged layout: `u = sum_k 2^k *
/// (stump k's condition)`, the table summing the stumps' leaves.
fn stumps_per_bootstrap(inputs: u32) -> usize {
    inputs.max(2).ilog2() as usize
}

/// Whether a layout packs stumps into shared bootstraps: merged layouts of single-output
/// models (one digit per slot, so the packed table's sum lands in one slot).
fn packs_stumps(merged: bool, n_outputs: usize) -> bool {
    merged && n_outputs == 1
}

/// Bootstraps the stumps of each group save when packed [`stumps_per_bootstrap`] to one.
fn packed_stumps_saving(trees: &[QTree], group_of: &[u32], per_bootstrap: usize) -> usize {
    let mut per_group: BTreeMap<u32, usize> = BTreeMap::new();
    for (t, &g) in trees.iter().zip(group_of) {
        if stump_of(t).is_some() {
            *per_group.entry(g).or_insert(0) += 1;
        }
    }
    per_group
        .values()
        .map(|&s| s - s.div_ceil(per_bootstrap.max(1)))
        .sum()
}

/// Splits the trees with bootstraps (`shapes[t] > 0`) into `groups` groups of at most
/// `ceil(active / groups)` trees, balancing the bootstrap outputs per group (largest trees
/// first, each to the lightest group with room). Returns each tree's group, the largest group's
/// tree count and the largest group's bootstrap count.
fn partition(shapes: &[usize], groups: usize) -> (Vec<u32>, usize, usize) {
    let mut active: Vec<usize> = (0..shapes.len()).filter(|&t| shapes[t] > 0).collect();
    let groups = groups.clamp(1, active.len().max(1));
    let cap = active.len().div_ceil(groups);
    active.sort_by_key(|&t| std::cmp::Reverse(shapes[t]));
    let mut group_of = vec![0u32; shapes.len()];
    let mut load = vec![(0usize, 0usize); groups];
    for t in active {
        let g = (0..groups)
            .filter(|&g| load[g].0 < cap)
            .min_by_key(|&g| (load[g].1, g))
            .expect("the groups hold every active tree");
        load[g].0 += 1;
        load[g].1 += shapes[t];
        group_of[t] = g as u32;
    }
    let trees = load.iter().map(|l| l.0).max().unwrap_or(0);
    let outputs = load.iter().map(|l| l.1).max().unwrap_or(0);
    (group_of, trees, outputs)
}

/// Works out the layout for trees with `n_outputs` score outputs, bootstrapped under `params`,
/// whose leaves must spread over at least `min_leaf_range` integers per tree and output.
///
/// The fewest groups that give that range are chosen (one group, the single-slot layout,
/// whenever it does), and their leaf range is the most their slots carry. When no grouping
/// reaches `min_leaf_range` (at most [`crate::model::MAX_OUTPUTS`] slots), the finest one is
/// returned; the caller reads `leaf_range`.
///
/// A single-output model (a binary classifier, a regressor) is also laid out with merged
/// shapes (a leaf beside a pair of leaves, two pairs under one branch near the root, or four
/// stumps in one bootstrap; one table per bootstrap, one digit per slot, so more tree groups
/// for the same leaves); that layout is chosen when it needs
/// fewer bootstraps and carries at least the leaves the other does, or `min_leaf_range`.
pub fn plan_layout(
    trees: &[QTree],
    n_outputs: usize,
    params: ParamSet,
    min_leaf_range: u64,
) -> Result<Layout, PlanError> {
    let plain = plan_layout_as(trees, n_outputs, params, min_leaf_range, false)?;
    if n_outputs != 1 {
        return Ok(plain);
    }
    let want = min_leaf_range.clamp(1, MAX_LEAF_RANGE);
    match plan_layout_as(trees, n_outputs, params, min_leaf_range, true) {
        Ok(m)
            if m.pbs_per_record < plain.pbs_per_record
                && m.leaf_range >= want.min(plain.leaf_range) =>
        {
            Ok(m)
        }
        _ => Ok(plain),
    }
}

/// [`plan_layout`] with shapes merged (`merged`: one table per bootstrap, one digit per slot)
/// or not, as asked rather than chosen.
pub fn plan_layout_as(
    trees: &[QTree],
    n_outputs: usize,
    params: ParamSet,
    min_leaf_range: u64,
    merged: bool,
) -> Result<Layout, PlanError> {
    let noise = BootstrapNoise::of(params);
    let inputs = noise.pbs_input_values;
    let shapes: Vec<Vec<Shape>> = trees
        .iter()
        .map(|t| tree_shapes(t, merged.then_some(inputs)))
        .collect();
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
    if n_outputs == 0 || n_outputs > crate::model::MAX_OUTPUTS {
        return Err(PlanError::Malformed(format!(
            "{n_outputs} outputs; between 1 and {} are supported",
            crate::model::MAX_OUTPUTS
        )));
    }
    let functions: u8 = if max_u < inputs / 2 && !merged { 2 } else { 1 };
    let digits: u8 = if n_outputs == 1 && functions == 2 {
        2
    } else {
        1
    };
    let per_shape = (n_outputs * digits as usize).div_ceil(functions as usize);
    let per_tree: Vec<usize> = shapes.iter().map(Vec::len).collect();
    let n_shapes: usize = per_tree.iter().sum();
    let active = per_tree.iter().filter(|&&s| s > 0).count().max(1);
    let slots_per_group = n_outputs * digits as usize;
    let max_groups = (crate::model::MAX_OUTPUTS / slots_per_group).clamp(1, active);
    let want = min_leaf_range.clamp(1, MAX_LEAF_RANGE);
    let mut finest: Option<Layout> = None;
    for groups in 1..=max_groups {
        let (group_of, trees_per_group, outputs_per_slot) = partition(&per_tree, groups);
        let per_group = trees_per_group.max(1) as u64;
        let slot_bits = noise.slot_bits_for(outputs_per_slot.max(1)).min(40);
        let top = (1u64 << slot_bits) - 1;
        let (digit_base, leaf_range) = if digits == 2 {
            let base = top / per_group + 1;
            let high = top / per_group;
            (base, (base * (high + 1) - 1).min(MAX_LEAF_RANGE))
        } else {
            (1, (top / per_group).min(MAX_LEAF_RANGE))
        };
        let layout = Layout {
            functions,
            digits,
            digit_base,
            slot_bits,
            leaf_range,
            pbs_per_record: n_shapes * per_shape
                - if packs_stumps(merged, n_outputs) {
                    packed_stumps_saving(trees, &group_of, stumps_per_bootstrap(inputs))
                } else {
                    0
                },
            groups,
            group_of,
            trees_per_group,
            outputs_per_slot,
            merged,
        };
        if leaf_range >= want {
            return Ok(layout);
        }
        if finest.as_ref().is_none_or(|f| leaf_range > f.leaf_range) {
            finest = Some(layout);
        }
    }
    match finest {
        Some(layout) if layout.leaf_range > 0 => Ok(layout),
        _ => Err(PlanError::Malformed(format!(
            "{active} trees leave no room for leaf values in {max_groups} groups of score slots"
        ))),
    }
}

/// The largest spread of one tree's leaf values for one output.
fn widest_spread(model: &TreeModel) -> u64 {
    model
        .trees
        .iter()
        .flat_map(|t| {
            (0..model.n_outputs as usize).map(move |o| {
                let (lo, hi) = t
                    .leaf_values()
                    .map(|v| v.get(o).copied().unwrap_or(0))
                    .fold((i64::MAX, i64::MIN), |(a, b), v| (a.min(v), b.max(v)));
                hi.saturating_sub(lo).max(0) as u64
            })
        })
        .max()
        .unwrap_or(0)
}

/// Compiles a quantized ensemble into its bootstrap plan (server) and slot readout (client),
/// and proves the plan under `params`, with the fewest tree groups its leaves fit
/// ([`plan_layout`] asked for the widest leaf spread the model has).
/// `eval_plain(bits) == readout.scores(plan.eval_slots(bits))` for every bit pattern.
pub fn build_plan(
    model: &TreeModel,
    params: ParamSet,
) -> Result<(ForestPlan, SlotReadout), PlanError> {
    let layout = plan_layout(
        &model.trees,
        model.n_outputs as usize,
        params,
        widest_spread(model),
    )?;
    build_plan_in(model, &layout, params)
}

/// [`build_plan`] in a given layout (from [`plan_layout`] on the same trees' structure);
/// refuses a model whose leaves spread wider than the layout allows.
pub fn build_plan_in(
    model: &TreeModel,
    layout: &Layout,
    params: ParamSet,
) -> Result<(ForestPlan, SlotReadout), PlanError> {
    let outputs = model.n_outputs as usize;
    if layout.group_of.len() != model.trees.len() || layout.groups == 0 {
        return Err(PlanError::Malformed(format!(
            "a layout for {} trees in {} groups, for a model of {} trees",
            layout.group_of.len(),
            layout.groups,
            model.trees.len()
        )));
    }
    let input_values =
        (BootstrapNoise::of(params).pbs_input_values / layout.functions as u32) as usize;
    let mut offsets = vec![0i64; outputs];
    let mut programs = Vec::new();
    // A merged layout packs each group's stumps into shared bootstraps (below).
    let mut stumps: BTreeMap<u32, Vec<PackedStump>> = BTreeMap::new();
    for (ti, t) in model.trees.iter().enumerate() {
        let mins = leaf_minimums(ti, t, outputs, layout)?;
        for (offset, m) in offsets.iter_mut().zip(&mins) {
            *offset += m;
        }
        if packs_stumps(layout.merged, outputs)
            && let Some((cond, yes, no)) = stump_of(t)
        {
            // Its leaves less the tree's minimum: [no, yes], indexed by the condition.
            let value = |leaf: usize| (t.values_at(leaf)[0] - mins[0]) as u64;
            stumps
                .entry(layout.group_of[ti])
                .or_default()
                .push(PackedStump {
                    tree: ti,
                    cond,
                    leaves: [value(no), value(yes)],
                });
            continue;
        }
        // A merged layout has one table per bootstrap: its tables take every input value.
        for shape in tree_shapes(t, layout.merged.then_some(input_values as u32)) {
            let luts = shape_luts(ti, t, &shape, &mins, layout, input_values);
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
    let per_bootstrap = stumps_per_bootstrap(input_values as u32);
    for pack in stumps.values().flat_map(|g| g.chunks(per_bootstrap)) {
        programs.push(packed_stumps(layout, pack, input_values));
    }
    let plan = ForestPlan {
        thermometer_bits: model.thresholds.len() as u32,
        functions: layout.functions,
        programs,
        score_slots: layout.score_slots(outputs) as u32,
        slot_bits: layout.slot_bits,
    };
    plan.validate(params)?;
    Ok((plan, slot_readout(outputs, layout, offsets)))
}

/// A stump waiting to share a bootstrap: its tree, its condition, and its leaves (less the
/// tree's minimum) when the condition is 0 and 1.
struct PackedStump {
    tree: usize,
    cond: Cond,
    leaves: [u64; 2],
}

/// One bootstrap for up to [`stumps_per_bootstrap`] stumps of one group (single output, one
/// digit): `u = sum_k 2^k * c_k`, `c_k` stump k's condition, and the table at `u` sums each
/// stump's leaf for its bit of `u`.
fn packed_stumps(layout: &Layout, pack: &[PackedStump], input_values: usize) -> Program {
    let conds: Vec<(Cond, i32)> = pack
        .iter()
        .enumerate()
        .map(|(k, s)| (s.cond, 1 << k))
        .collect();
    let shape = weighted_shape(&conds, Vec::new());
    let mut table = vec![0u64; input_values];
    for (u, entry) in table.iter_mut().enumerate().take(1 << pack.len()) {
        *entry = pack
            .iter()
            .enumerate()
            .map(|(k, s)| s.leaves[u >> k & 1])
            .sum();
    }
    let first = pack[0].tree;
    Program {
        tree: first as u32,
        terms: shape.terms,
        constant: shape.constant,
        luts: vec![Lut {
            slot: layout.slot(first, 1, 0, 0),
            table,
        }],
    }
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
    ti: usize,
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
                slot: layout.slot(ti, mins.len(), o, digit),
                table,
            });
        }
    }
    luts
}

/// The client's readout: output `o`'s score is `offset + sum over groups of (low digit + base *
/// high digit)`.
fn slot_readout(outputs: usize, layout: &Layout, offsets: Vec<i64>) -> SlotReadout {
    let d = layout.digits as usize;
    let weight = |digit: usize| {
        if digit == 0 {
            1
        } else {
            layout.digit_base as i64
        }
    };
    let per_group = layout.slots_per_group(outputs);
    SlotReadout {
        slots: (0..outputs)
            .map(|o| {
                (0..layout.groups)
                    .flat_map(|g| {
                        (0..d).map(move |digit| {
                            ((g * per_group + o * d + digit) as u32, weight(digit))
                        })
                    })
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
                thresholds: thresholds(bits),
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

    const P: ParamSet = ParamSet::Glwe2048TUniform17;

    /// `bits` thresholds on one feature, at 0, 1, 2, ...
    fn thresholds(bits: u32) -> Vec<Threshold> {
        (0..bits)
            .map(|j| Threshold {
                feature: 0,
                value: j as f32,
                inclusive: false,
            })
            .collect()
    }

    /// A full tree of `depth` over distinct bits, leaf `k` worth `k`.
    fn full_tree(depth: u32) -> QTree {
        fn grow(nodes: &mut Vec<QNode>, depth: u32, next_bit: &mut u32, leaf: &mut i64) -> u32 {
            let i = nodes.len();
            if depth == 0 {
                nodes.push(QNode::Leaf {
                    values: vec![*leaf],
                });
                *leaf += 1;
                return i as u32;
            }
            nodes.push(QNode::Leaf { values: vec![] });
            let bit = *next_bit;
            *next_bit += 1;
            let yes = grow(nodes, depth - 1, next_bit, leaf);
            let no = grow(nodes, depth - 1, next_bit, leaf);
            nodes[i] = QNode::Branch {
                bit,
                yes_when: bit.is_multiple_of(2),
                yes,
                no,
            };
            i as u32
        }
        let mut nodes = Vec::new();
        grow(&mut nodes, depth, &mut 0, &mut 0);
        QTree { nodes }
    }

    /// A single-output model of `trees` over `bits` distinct thresholds, planned and proven;
    /// every bit pattern reads back the model's score. Returns the plan's bootstraps.
    fn planned_bootstraps(trees: Vec<QTree>, bits: u32) -> usize {
        let model = TreeModel {
            n_features: 1,
            n_outputs: 1,
            thresholds: thresholds(bits),
            trees,
            leaf_bits: 8,
            scale: 1.0,
        };
        let layout = plan_layout(&model.trees, 1, P, widest_spread(&model)).unwrap();
        let (plan, readout) = build_plan(&model, P).unwrap();
        plan.validate(P).unwrap();
        assert_eq!(plan.pbs_per_record(), layout.pbs_per_record);
        for pattern in 0..(1u32 << bits) {
            let b: Vec<bool> = (0..bits).map(|j| pattern >> j & 1 == 1).collect();
            assert_eq!(
                readout.scores(&plan.eval_slots(&b)),
                model.eval_plain(&b),
                "bits {pattern:b}"
            );
        }
        plan.pbs_per_record()
    }

    /// Stumps of one group share bootstraps, four to one (`u = c0 + 2 c1 + 4 c2 + 8 c3`, the
    /// table summing their leaves): 9 stumps take 3 bootstraps, and every bit pattern reads
    /// back the ensemble's sum.
    #[test]
    fn stumps_share_bootstraps_four_to_one() {
        let trees: Vec<QTree> = (0..9u32)
            .map(|k| QTree {
                nodes: vec![
                    QNode::Branch {
                        bit: k,
                        yes_when: k % 3 != 0,
                        yes: 1,
                        no: 2,
                    },
                    QNode::Leaf {
                        values: vec![(k as i64 * 5) % 7 - 3],
                    },
                    QNode::Leaf {
                        values: vec![(k as i64 * 3) % 5 - 2],
                    },
                ],
            })
            .collect();
        assert_eq!(planned_bootstraps(trees, 9), 3);
    }

    /// Two pairs of leaves under one branch share a bootstrap at the root and one step below
    /// it: a depth-2 tree is one bootstrap, a full depth-3 tree two (four pairs before); at
    /// depth 4 the pairs are two steps down and keep theirs. Every bit pattern reads back its
    /// leaf.
    #[test]
    fn two_pairs_under_one_branch_share_a_bootstrap() {
        for (depth, bootstraps) in [(2u32, 1usize), (3, 2), (4, 8)] {
            let bits = (1u32 << depth) - 1;
            assert_eq!(
                planned_bootstraps(vec![full_tree(depth)], bits),
                bootstraps,
                "depth {depth}"
            );
        }
    }

    /// A small deterministic generator (splitmix64) for the many-tree models.
    struct Mix(u64);
    impl Mix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A random tree of depth <= `depth` over `bits` bits; leaf values in `[lo, lo + spread]`
    /// (one leaf at each end, so the tree's spread is exactly `spread`).
    fn random_tree(rng: &mut Mix, depth: usize, bits: u32, outputs: usize, spread: i64) -> QTree {
        fn grow(rng: &mut Mix, nodes: &mut Vec<QNode>, depth: usize, bits: u32, outputs: usize) {
            let i = nodes.len();
            nodes.push(QNode::Leaf {
                values: vec![0; outputs],
            });
            if depth == 0 || (i > 0 && rng.below(6) == 0) {
                return;
            }
            let yes = nodes.len() as u32;
            grow(rng, nodes, depth - 1, bits, outputs);
            let no = nodes.len() as u32;
            grow(rng, nodes, depth - 1, bits, outputs);
            nodes[i] = QNode::Branch {
                bit: rng.below(bits as u64) as u32,
                yes_when: rng.below(2) == 0,
                yes,
                no,
            };
        }
        let mut nodes = Vec::new();
        grow(rng, &mut nodes, depth, bits, outputs);
        let leaves: Vec<usize> = (0..nodes.len())
            .filter(|&i| matches!(nodes[i], QNode::Leaf { .. }))
            .collect();
        let lo: Vec<i64> = (0..outputs).map(|_| rng.below(9) as i64 - 4).collect();
        for (k, &i) in leaves.iter().enumerate() {
            let values = (0..outputs)
                .map(|o| {
                    lo[o]
                        + match k {
                            0 => 0,
                            1 => spread,
                            _ => rng.below(spread as u64 + 1) as i64,
                        }
                })
                .collect();
            nodes[i] = QNode::Leaf { values };
        }
        QTree { nodes }
    }

    fn forest(seed: u64, trees: usize, depth: usize, outputs: usize, spread: i64) -> TreeModel {
        let bits = 10u32;
        let mut rng = Mix(seed);
        TreeModel {
            n_features: 1,
            n_outputs: outputs as u32,
            thresholds: thresholds(bits),
            trees: (0..trees)
                .map(|_| random_tree(&mut rng, depth, bits, outputs, spread))
                .collect(),
            leaf_bits: 20,
            scale: 1.0,
        }
    }

    /// The leaf range `groups` groups give (one score slot per output and digit each), with
    /// shapes merged and digits as `layout` has them.
    fn range_in_groups(model: &TreeModel, layout: &Layout, groups: usize) -> u64 {
        let shapes: Vec<usize> = model
            .trees
            .iter()
            .map(|t| {
                tree_shapes(
                    t,
                    layout
                        .merged
                        .then_some(BootstrapNoise::of(P).pbs_input_values),
                )
                .len()
            })
            .collect();
        let (_, per_group, outputs) = partition(&shapes, groups);
        let top = (1u64 << BootstrapNoise::of(P).slot_bits_for(outputs).min(40)) - 1;
        let per_group = per_group as u64;
        let digits = layout.digits;
        if digits == 2 {
            ((top / per_group + 1) * (top / per_group + 1) - 1).min(MAX_LEAF_RANGE)
        } else {
            (top / per_group).min(MAX_LEAF_RANGE)
        }
    }

    /// The leaf range one score slot per output gives (the layout before tree groups).
    fn single_slot_range(model: &TreeModel) -> u64 {
        let layout = plan_layout(&model.trees, model.n_outputs as usize, P, 1).unwrap();
        range_in_groups(model, &layout, 1)
    }

    /// 100 trees of depth <= 3: one slot leaves them no room (the single-slot layout refused
    /// them); now they plan in groups, more of them the finer the leaves must be, and a model
    /// quantized to the range reads back exactly on every bit pattern.
    #[test]
    fn a_forest_one_slot_cannot_hold_plans_in_groups() {
        let shallow = forest(7, 100, 3, 1, 1);
        assert!(
            shallow
                .trees
                .iter()
                .all(|t| t.depth() <= 3 && t.nodes.len() > 1)
        );
        assert_eq!(single_slot_range(&shallow), 0);
        let coarse = plan_layout(&shallow.trees, 1, P, 1).unwrap();
        let fine = plan_layout(&shallow.trees, 1, P, 15).unwrap();
        assert!(coarse.groups > 1 && coarse.leaf_range >= 1, "{coarse:?}");
        assert!(
            fine.groups > coarse.groups && fine.leaf_range >= 15,
            "{fine:?}"
        );
        // Fewest groups: one fewer would not give the range; each group holds its share.
        for (need, layout) in [(1, &coarse), (15, &fine)] {
            assert_eq!(
                range_in_groups(&shallow, layout, layout.groups),
                layout.leaf_range
            );
            assert!(range_in_groups(&shallow, layout, layout.groups - 1) < need);
            assert_eq!(layout.trees_per_group, 100usize.div_ceil(layout.groups));
            for g in 0..layout.groups as u32 {
                let n = layout.group_of.iter().filter(|&&x| x == g).count();
                assert!(n > 0 && n <= layout.trees_per_group);
            }
        }
        let model = forest(7, 100, 3, 1, fine.leaf_range as i64);
        let (plan, readout) = build_plan_in(&model, &fine, P).unwrap();
        assert_eq!(
            plan.score_slots as usize,
            fine.groups * fine.digits as usize
        );
        assert_eq!(plan.pbs_per_record(), fine.pbs_per_record);
        for pattern in 0..1u32 << 10 {
            let b: Vec<bool> = (0..10).map(|j| pattern >> j & 1 == 1).collect();
            let slots = plan.eval_slots(&b);
            assert!(slots.iter().all(|&s| s < 1 << plan.slot_bits));
            assert_eq!(readout.scores(&slots), model.eval_plain(&b));
        }
        // build_plan finds the same grouping from the leaves alone.
        assert_eq!(build_plan(&model, P).unwrap().0, plan);
        // Leaves wider than the layout are refused with a typed error.
        let wider = forest(7, 100, 3, 1, fine.leaf_range as i64 + 1);
        assert!(matches!(
            build_plan_in(&wider, &fine, P),
            Err(PlanError::Malformed(_))
        ));
    }

    /// Where one slot per output already gives the range asked for, the layout is the
    /// single-slot one (small models' plans are unchanged); one more integer needs groups.
    #[test]
    fn the_single_slot_layout_is_kept_while_it_gives_the_range() {
        let model = forest(3, 20, 4, 1, 1);
        let single = single_slot_range(&model);
        assert!(single >= 3, "{single}");
        for need in [1, single] {
            let l = plan_layout(&model.trees, 1, P, need).unwrap();
            assert_eq!((l.groups, l.leaf_range), (1, single));
            assert!(l.group_of.iter().all(|&g| g == 0));
        }
        let l = plan_layout(&model.trees, 1, P, single + 1).unwrap();
        assert!(l.groups > 1 && l.leaf_range > single, "{l:?}");
        // Several outputs: one slot per output and group.
        let three = forest(3, 30, 6, 3, 1);
        let l = plan_layout(&three.trees, 3, P, 40).unwrap();
        assert_eq!((l.digits, l.functions), (1, 1));
        assert!(l.groups > 1 && l.leaf_range >= 40, "{l:?}");
        assert_eq!(l.score_slots(3), 3 * l.groups);
    }

    /// A plan that sums two groups into one slot, or decodes a slot wider than its noise
    /// allows, is refused by the proof a worker re-runs.
    #[test]
    fn a_plan_that_overfills_a_slot_is_refused() {
        let shallow = forest(11, 60, 3, 1, 1);
        let layout = plan_layout(&shallow.trees, 1, P, 15).unwrap();
        assert!(layout.groups >= 2, "{layout:?}");
        let model = forest(11, 60, 3, 1, layout.leaf_range as i64);
        let (plan, _) = build_plan_in(&model, &layout, P).unwrap();
        plan.validate(P).unwrap();
        // Group 1's tables moved onto group 0's slots: the sum overflows.
        let mut merged = plan.clone();
        for p in &mut merged.programs {
            for l in &mut p.luts {
                if l.slot == 2 || l.slot == 3 {
                    l.slot -= 2;
                }
            }
        }
        assert!(
            matches!(merged.validate(P), Err(PlanError::Slot { slot, .. }) if slot < 2),
            "{:?}",
            merged.validate(P)
        );
        // One more bit per slot than the noise of its bootstrap outputs allows.
        let mut wide = plan.clone();
        wide.slot_bits += 1;
        assert!(matches!(wide.validate(P), Err(PlanError::Slot { .. })));
        // A table entry raised past what the group's slot holds.
        let mut big = plan;
        let top = (1u64 << big.slot_bits) - 1;
        let l = &mut big.programs[0].luts[0];
        let u = l.table.iter().position(|&v| v > 0).unwrap_or(0);
        l.table[u] = top;
        assert!(matches!(big.validate(P), Err(PlanError::Slot { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Many-tree forests (up to 160 trees of depth up to 8, 1..=3 outputs, leaves spread
        /// up to 24 per tree): the plan is proven with the fewest groups that hold the leaves,
        /// every slot stays in range, and the groups' slot sums read back to the integer
        /// reference on random bit patterns.
        #[test]
        fn groups_sum_to_the_reference(
            seed in any::<u64>(),
            trees in 20usize..=160,
            depth in 1usize..=8,
            outputs in 1usize..=3,
            spread in 1i64..=24,
        ) {
            let model = forest(seed, trees, depth, outputs, spread);
            let layout = plan_layout(&model.trees, outputs, P, spread as u64).unwrap();
            if layout.leaf_range < spread as u64 {
                // Beyond what the finest grouping carries (one tree per group, or 256 slots):
                // refused with a typed error, never planned.
                let limit = (crate::model::MAX_OUTPUTS / layout.slots_per_group(outputs)).min(trees);
                prop_assert_eq!(layout.groups, limit);
                prop_assert!(matches!(build_plan(&model, P), Err(PlanError::Malformed(_))));
                return Ok(());
            }
            prop_assert!(layout.groups == 1 || range_in_groups(&model, &layout, layout.groups - 1) < spread as u64);
            let (plan, readout) = build_plan(&model, P).unwrap();
            plan.validate(P).unwrap();
            let per_group = plan.score_slots as usize / readout.slots.len();
            prop_assert!(readout.slots.iter().all(|t| t.len() == per_group));
            let mut rng = Mix(seed ^ 0x5eed);
            for _ in 0..64 {
                let b: Vec<bool> = (0..10).map(|_| rng.below(2) == 1).collect();
                let slots = plan.eval_slots(&b);
                prop_assert!(slots.iter().all(|&s| s < 1 << plan.slot_bits));
                prop_assert_eq!(readout.scores(&slots), model.eval_plain(&b));
            }
        }
    }
}
