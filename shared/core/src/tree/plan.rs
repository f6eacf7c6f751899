//! The bootstrap plan: what the server evaluates for a tree ensemble (one programmable
//! bootstrap per pair of sibling leaves, each applying up to two lookup tables to a linear form
//! of thermometer bits), and the proof that it evaluates exactly ([`ForestPlan::validate`]).

use super::noise::BootstrapNoise;
use crate::params::{Encryption, ParamSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

    /// The bits every input with a non-zero table entry must have: a term whose coefficient
    /// exceeds the slack between the largest `u` and the smallest `u` any table is non-zero at
    /// is at its maximum whenever the bootstrap fires (`(bit, value)`), or `None` when no table
    /// can be non-zero.
    pub fn firing_bits(&self) -> Option<Vec<(u32, bool)>> {
        let (lo, hi) = self.u_range();
        let first = (lo.max(0)..=hi).find(|&u| {
            self.luts
                .iter()
                .any(|l| l.table.get(u as usize).is_some_and(|&v| v != 0))
        })?;
        let slack = hi - first;
        Some(
            self.terms
                .iter()
                .filter(|&&(_, c)| (c as i64).abs() > slack)
                .map(|&(b, c)| (b, c > 0))
                .collect(),
        )
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
    /// Thermometer bits (ciphertext columns) per record.
    pub thermometer_bits: u32,
    /// Lookup tables per bootstrap (1, or 2 with tfhe's many-LUT when every `u < 8`).
    pub functions: u8,
    pub programs: Vec<Program>,
    /// Score slots per record (each decrypts to one integer; the client's [`SlotReadout`]
    /// combines them into the model's scores).
    ///
    /// [`SlotReadout`]: super::readout::SlotReadout
    pub score_slots: u32,
    /// Slot sums are decoded from the top `slot_bits` bits (output step `2^(64 - slot_bits)`).
    pub slot_bits: u8,
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

impl ForestPlan {
    /// Inputs a lookup table covers: the bootstrap's input values (16) over `functions`.
    pub fn input_values(&self, params: ParamSet) -> u32 {
        BootstrapNoise::of(params).pbs_input_values / self.functions.max(1) as u32
    }

    pub fn pbs_per_record(&self) -> usize {
        self.programs.len()
    }

    /// Bootstrap outputs added into each slot.
    pub fn outputs_per_slot(&self) -> Vec<usize> {
        let mut m = vec![0usize; self.score_slots as usize];
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
        let mut s = vec![0u64; self.score_slots as usize];
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
    pub fn validate(&self, params: ParamSet) -> Result<(), PlanError> {
        self.validate_for(params, Encryption::SecretKey)
    }

    /// [`ForestPlan::validate`] for inputs encrypted as `encryption` says (the fresh noise
    /// of a public-key input is larger; it enters only the bootstrap-input noise check).
    pub fn validate_for(&self, params: ParamSet, encryption: Encryption) -> Result<(), PlanError> {
        let noise = BootstrapNoise::of(params);
        // Bounded before anything is sized from them (a hostile plan could name 2^32 slots).
        if !(1..=2).contains(&self.functions)
            || !(1..=crate::model::MAX_OUTPUTS as u32).contains(&self.score_slots)
            || !(1..=crate::model::MAX_FEATURES as u32).contains(&self.thermometer_bits)
        {
            return Err(PlanError::Malformed(format!(
                "{} functions, {} slots, {} bits",
                self.functions, self.score_slots, self.thermometer_bits
            )));
        }
        let limit = self.input_values(params);
        let fresh_in_nominal =
            (encryption.fresh_variance_log2(params) - noise.pbs_output_variance_log2).exp2();
        // Per tree label: its bootstraps, and per slot their largest entries.
        let mut trees: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        let mut tops: Vec<Vec<u64>> = Vec::with_capacity(self.programs.len());
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
            if p.norm2() as f64 * fresh_in_nominal > noise.max_input_norm2 {
                return Err(PlanError::InputNoise {
                    program: i,
                    norm2: p.norm2(),
                });
            }
            if p.luts.is_empty()
                || p.luts.len() > self.functions as usize
                || p.terms.iter().any(|&(b, _)| b >= self.thermometer_bits)
            {
                return Err(PlanError::Malformed(format!("bootstrap {i}")));
            }
            let mut top = vec![0u64; self.score_slots as usize];
            for l in &p.luts {
                let t = top
                    .get_mut(l.slot as usize)
                    .ok_or_else(|| PlanError::Malformed(format!("bootstrap {i}: slot")))?;
                if l.table.len() != limit as usize {
                    return Err(PlanError::Malformed(format!("bootstrap {i}: table length")));
                }
                let m = l.table[lo as usize..=hi as usize]
                    .iter()
                    .max()
                    .copied()
                    .unwrap_or(0);
                *t = t.saturating_add(m);
            }
            tops.push(top);
            trees.entry(p.tree).or_default().push(i);
        }
        // Per slot, a tree's bootstraps add one largest entry only if no two of those writing the
        // slot can fire together (checked from their inputs, not from the label); otherwise all
        // of them count.
        let firing: Vec<Option<Vec<(u32, bool)>>> =
            self.programs.iter().map(Program::firing_bits).collect();
        let exclusive = |a: usize, b: usize| match (&firing[a], &firing[b]) {
            (None, _) | (_, None) => true,
            (Some(fa), Some(fb)) => fa
                .iter()
                .any(|(bit, v)| fb.iter().any(|(bb, vb)| bb == bit && vb != v)),
        };
        let mut max = vec![0u64; self.score_slots as usize];
        for members in trees.values() {
            for (slot, m) in max.iter_mut().enumerate() {
                let writers: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&i| tops[i][slot] > 0)
                    .collect();
                let apart = writers
                    .iter()
                    .enumerate()
                    .all(|(k, &a)| writers[k + 1..].iter().all(|&b| exclusive(a, b)));
                let part = writers.iter().map(|&i| tops[i][slot]);
                let add = if apart {
                    part.max().unwrap_or(0)
                } else {
                    part.fold(0u64, u64::saturating_add)
                };
                *m = m.saturating_add(add);
            }
        }
        let outputs = self.outputs_per_slot();
        for (slot, (&m, &top)) in outputs.iter().zip(&max).enumerate() {
            let noise_log2 = noise.slot_noise_log2(m);
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

#[cfg(test)]
mod tests {
    use super::*;

    const P: ParamSet = ParamSet::Glwe2048TUniform17;

    /// Two bootstraps labelled as one tree add one largest entry only when their inputs show
    /// they cannot fire together; a plan that merely claims it is refused when both could.
    #[test]
    fn tree_labels_are_not_trusted() {
        let lut = |u: usize| {
            let mut table = vec![0u64; 16];
            table[u] = 40;
            Lut { slot: 0, table }
        };
        // Both fire when bit 0 is set: 80 does not fit 6-bit slots.
        let both = |terms1: Vec<(u32, i32)>, constant1: i32| ForestPlan {
            thermometer_bits: 2,
            functions: 1,
            programs: vec![
                Program {
                    tree: 0,
                    terms: vec![(0, 1)],
                    constant: 0,
                    luts: vec![lut(1)],
                },
                Program {
                    tree: 0,
                    terms: terms1,
                    constant: constant1,
                    luts: vec![lut(1)],
                },
            ],
            score_slots: 1,
            slot_bits: 6,
        };
        assert!(matches!(
            both(vec![(0, 1)], 0).validate(P),
            Err(PlanError::Slot { max: 80, .. })
        ));
        // The second fires when bit 0 is clear (u = 1 - bit): never together, 40 fits.
        both(vec![(0, -1)], 1).validate(P).unwrap();
    }

    #[test]
    fn plans_outside_the_proof_are_refused() {
        let lut = |slot| Lut {
            slot,
            table: vec![0; 8],
        };
        let mut plan = ForestPlan {
            thermometer_bits: 2,
            functions: 2,
            programs: vec![Program {
                tree: 0,
                terms: vec![(0, 4), (1, 4)],
                constant: 0,
                luts: vec![lut(0)],
            }],
            score_slots: 1,
            slot_bits: 6,
        };
        // u reaches 8: outside a two-table bootstrap's inputs.
        assert!(matches!(
            plan.validate(P),
            Err(PlanError::InputRange { .. })
        ));
        plan.programs[0].terms = vec![(0, 1), (1, 1)];
        plan.validate(P).unwrap();
        // A slot wider than the noise allows for its bootstrap count.
        plan.slot_bits = 12;
        assert!(matches!(plan.validate(P), Err(PlanError::Slot { .. })));
        plan.slot_bits = 6;
        // An input whose noise exceeds the analysed bound.
        plan.programs[0].terms = vec![(0, 1 << 30)];
        plan.programs[0].constant = -(1 << 30);
        assert!(plan.validate(P).is_err());
        // A table value that overflows the slot.
        plan.programs[0].terms = vec![(0, 1)];
        plan.programs[0].constant = 0;
        plan.programs[0].luts[0].table[1] = 64;
        assert!(matches!(plan.validate(P), Err(PlanError::Slot { .. })));
    }
}
