//! The network family behind the model-family traits: the server part is the [`MlpServer`],
//! the client part the [`MlpClient`].

use super::{MlpClient, MlpServer};
use crate::model::{
    Bounds, ClientFamily, MAX_FEATURES, MAX_OUTPUTS, ModelError, ModelFamily, Prediction,
    ServerFamily,
};
use crate::params::{Encryption, ParamSet};

impl ServerFamily for MlpServer {
    fn family(&self) -> ModelFamily {
        ModelFamily::NeuralNetwork
    }

    fn input_columns(&self) -> u32 {
        self.input_columns
    }

    fn result_values(&self) -> u32 {
        self.output.len() as u32
    }

    /// Scores of all records packed `n` per GLWE.
    fn output_ciphertexts(&self, records: u32, n: usize) -> u32 {
        (records as usize * self.output.len()).div_ceil(n) as u32
    }

    fn output_bits(&self) -> u8 {
        self.output_bits
    }

    fn pbs_per_record(&self) -> usize {
        self.neurons()
    }

    /// The network's proof; the bounds report the widest score range and the largest noise
    /// (a network's scores are approximate: the noise margin is negative by design, the
    /// proven error is [`super::MlpProof::score_error`]).
    fn prove(&self, params: ParamSet, encryption: Encryption) -> Result<Bounds, ModelError> {
        let proof = self.prove_network_for(params, encryption)?;
        let lo = proof.score_range.iter().map(|r| r.0).fold(0f64, f64::min);
        let hi = proof.score_range.iter().map(|r| r.1).fold(0f64, f64::max);
        let sigma = proof.score_sigma.iter().cloned().fold(0f64, f64::max);
        let noise_log2 =
            (sigma * crate::tree::TAIL_SIGMAS).log2() + (64 - self.output_bits as i32) as f64;
        Ok(Bounds {
            output_bits: self.output_bits,
            output_min: lo.floor() as i64,
            output_max: hi.ceil() as i64,
            noise_log2,
            noise_margin_bits: (63 - self.output_bits as i32) as f64 - noise_log2,
        })
    }

    fn eval_plain(&self, columns: &[u64]) -> Vec<i64> {
        MlpServer::eval_plain(self, columns)
    }
}

impl ClientFamily for MlpClient {
    fn family(&self) -> ModelFamily {
        ModelFamily::NeuralNetwork
    }

    fn input_columns(&self) -> usize {
        self.quantizers.len()
    }

    fn column_bits(&self) -> u8 {
        self.column_bits
    }

    fn columns(&self, record: &[f64]) -> Vec<u64> {
        self.quantize(record)
    }

    fn result_values(&self) -> usize {
        self.n_scores as usize
    }

    fn output_bits(&self) -> u8 {
        self.output_bits
    }

    fn n_scores(&self) -> usize {
        self.n_scores as usize
    }

    fn classes(&self) -> &[String] {
        &self.labels
    }

    fn validate(&self, n_features: usize) -> Result<(), ModelError> {
        let scores = self.n_scores as usize;
        let labels_fit = self.labels.is_empty()
            || self.labels.len() == scores && scores >= 2
            || self.labels.len() == 2 && scores == 1;
        if n_features == 0
            || n_features > MAX_FEATURES
            || self.quantizers.len() != n_features
            || self
                .quantizers
                .iter()
                .any(|q| !(q.min.is_finite() && q.scale.is_finite() && q.scale > 0.0))
            || !(1..=16).contains(&self.input_bits)
            || self.column_bits <= self.input_bits
            || self.column_bits > 63
            || !(1..=62).contains(&self.output_bits)
            || !(1..=MAX_OUTPUTS).contains(&scores)
            || !labels_fit
            || !(self.score_scale.is_finite() && self.score_scale > 0.0)
            || !self.score_offset.is_finite()
            || !(self.score_offsets.is_empty() || self.score_offsets.len() == scores)
            || self.score_offsets.iter().any(|v| !v.is_finite())
        {
            return Err(ModelError::Inconsistent(
                "neural network client part is inconsistent".into(),
            ));
        }
        Ok(())
    }

    fn predict(&self, scores: &[i64]) -> Prediction {
        let (class, values) = self.finish(self.float_scores(scores));
        Prediction {
            class,
            label: match class {
                Some(c) => self.labels[c].clone(),
                None => format!("{}", values.first().copied().unwrap_or(0.0)),
            },
            scores: values.iter().map(|&v| v as f64).collect(),
        }
    }
}
