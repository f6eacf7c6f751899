//! The quantized tree-ensemble IR: thresholds the client compares against, trees whose
//! branches test thermometer bits and whose leaves carry integers, and the integer reference
//! ([`TreeModel::eval_plain`]) that decryption must reproduce.

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

    /// Every leaf's values, in node order.
    pub fn leaf_values(&self) -> impl Iterator<Item = &[i64]> {
        self.nodes.iter().filter_map(|n| match n {
            QNode::Leaf { values } => Some(values.as_slice()),
            QNode::Branch { .. } => None,
        })
    }

    /// The values of leaf node `i`.
    ///
    /// # Panics
    /// When node `i` is a branch (the planner only asks for nodes it found to be leaves).
    pub fn values_at(&self, i: usize) -> &[i64] {
        match &self.nodes[i] {
            QNode::Leaf { values } => values,
            QNode::Branch { .. } => panic!("node {i} is a branch, not a leaf"),
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
