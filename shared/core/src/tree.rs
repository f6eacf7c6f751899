//! Tree ensembles in the form the encrypted evaluation works on.
//!
//! The client does the comparisons in the clear, on its own machine: for every distinct
//! threshold the ensemble uses it sends one *thermometer bit* `[x_f > t]` (or `[x_f >= t]`),
//! so features need no quantization. The server only combines bits: a branch goes to its `yes`
//! child when its bit equals `yes_when`. Leaves carry integer values (one per output) at a
//! common scale; the integer reference [`TreeModel::eval_plain`] is what decryption must give.

use serde::{Deserialize, Serialize};

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

    /// Programmable bootstraps this tree needs in the planned scheme (one per pair of sibling
    /// leaves, one per leaf whose sibling is a subtree; docs/research/trees-plan.md).
    pub fn pbs_count(&self) -> usize {
        let is_leaf = |i: u32| matches!(self.nodes[i as usize], QNode::Leaf { .. });
        let mut n = 0;
        for node in &self.nodes {
            if let QNode::Branch { yes, no, .. } = node {
                n += usize::from(is_leaf(*yes) || is_leaf(*no));
            }
        }
        n.max(usize::from(self.nodes.len() == 1))
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

    pub fn pbs_per_record(&self) -> usize {
        self.trees.iter().map(QTree::pbs_count).sum()
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
