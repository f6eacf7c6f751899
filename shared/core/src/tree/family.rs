//! The tree-ensemble family behind the model-family traits: the server part is the
//! [`ForestPlan`], the client part the [`ForestClient`].

use super::noise::BootstrapNoise;
use super::plan::ForestPlan;
use super::readout::{ForestClient, THERMOMETER_COLUMN_BITS};
use crate::model::{
    Bounds, ClientFamily, MAX_FEATURES, MAX_OUTPUTS, ModelError, ModelFamily, Prediction,
    ServerFamily,
};
use crate::params::{Encryption, ParamSet};

impl ServerFamily for ForestPlan {
    fn family(&self) -> ModelFamily {
        ModelFamily::TreeEnsemble
    }

    fn input_columns(&self) -> u32 {
        self.thermometer_bits
    }

    fn result_values(&self) -> u32 {
        self.score_slots
    }

    /// Score slots of all records packed `n` per GLWE.
    fn output_ciphertexts(&self, records: u32, n: usize) -> u32 {
        (records as usize * self.score_slots as usize).div_ceil(n) as u32
    }

    fn output_bits(&self) -> u8 {
        self.slot_bits
    }

    fn pbs_per_record(&self) -> usize {
        self.programs.len()
    }

    fn prove(&self, params: ParamSet, encryption: Encryption) -> Result<Bounds, ModelError> {
        self.validate_for(params, encryption)
            .map_err(|e| ModelError::Inconsistent(e.to_string()))?;
        if self.thermometer_bits as usize > MAX_FEATURES || self.score_slots as usize > MAX_OUTPUTS
        {
            return Err(ModelError::Inconsistent(format!(
                "{} thermometer bits and {} score slots exceed the limits ({MAX_FEATURES}, {MAX_OUTPUTS})",
                self.thermometer_bits, self.score_slots
            )));
        }
        let worst = self.outputs_per_slot().into_iter().max().unwrap_or(0);
        let noise_log2 = BootstrapNoise::of(params).slot_noise_log2(worst);
        Ok(Bounds {
            output_bits: self.slot_bits,
            output_min: 0,
            output_max: (1i64 << self.slot_bits) - 1,
            noise_log2,
            noise_margin_bits: (63 - self.slot_bits as u32) as f64 - noise_log2,
        })
    }

    /// `columns` are thermometer bits; the outputs are score-slot sums.
    fn eval_plain(&self, columns: &[u64]) -> Vec<i64> {
        let bits: Vec<bool> = columns.iter().map(|&v| v != 0).collect();
        self.eval_slots(&bits)
            .into_iter()
            .map(|v| v as i64)
            .collect()
    }
}

impl ClientFamily for ForestClient {
    fn family(&self) -> ModelFamily {
        ModelFamily::TreeEnsemble
    }

    fn input_columns(&self) -> usize {
        self.thresholds.len()
    }

    fn column_bits(&self) -> u8 {
        THERMOMETER_COLUMN_BITS
    }

    fn columns(&self, record: &[f64]) -> Vec<u64> {
        self.thermometer_bits(record)
    }

    fn result_values(&self) -> usize {
        self.score_slots as usize
    }

    fn output_bits(&self) -> u8 {
        self.slot_bits
    }

    fn n_scores(&self) -> usize {
        self.slots.slots.len()
    }

    fn classes(&self) -> &[String] {
        &self.readout.labels
    }

    fn validate(&self, n_features: usize) -> Result<(), ModelError> {
        if n_features == 0
            || n_features > MAX_FEATURES
            || self.thresholds.is_empty()
            || self.thresholds.len() > MAX_FEATURES
            || self
                .thresholds
                .iter()
                .any(|t| t.feature as usize >= n_features || t.value.is_nan())
            || self.slots.slots.len() != self.slots.offsets.len()
            || self.slots.slots.is_empty()
            || self
                .slots
                .slots
                .iter()
                .flatten()
                .any(|&(s, _)| s >= self.score_slots)
            || !(self.scale.is_finite() && self.scale > 0.0)
            || !(1..=62).contains(&self.slot_bits)
        {
            return Err(ModelError::Inconsistent(
                "tree ensemble client part is inconsistent".into(),
            ));
        }
        Ok(())
    }

    /// `outputs` are the integer scores of [`super::SlotReadout::scores`].
    fn predict(&self, outputs: &[i64]) -> Prediction {
        let raw: Vec<f32> = outputs
            .iter()
            .map(|&v| (v as f64 * self.scale) as f32)
            .collect();
        let (label, scores) = self.readout.finish(raw);
        let class = label
            .as_ref()
            .and_then(|l| self.readout.labels.iter().position(|c| c == l));
        Prediction {
            class,
            label: label.unwrap_or_else(|| format!("{}", scores.first().copied().unwrap_or(0.0))),
            scores: scores.iter().map(|&v| v as f64).collect(),
        }
    }
}
