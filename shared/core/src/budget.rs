//! How long a chunk may take on a worker, and so how many records a bootstrapped model's chunk
//! holds. One source of truth with the deployment: the worker function's timeout
//! (`WorkerTimeoutSeconds` in `template.yaml`) reaches ingest as the environment variable
//! [`TIMEOUT_ENV`], and the client sizes chunks from the same default.

/// Environment variable carrying the worker function's timeout in seconds.
pub const TIMEOUT_ENV: &str = "FHE_BATCH_WORKER_TIMEOUT_SECONDS";
/// Environment variable carrying the bootstraps per second one worker sustains.
pub const PBS_RATE_ENV: &str = "FHE_BATCH_WORKER_PBS_PER_SECOND";
/// The worker timeout `template.yaml` deploys by default (Lambda's maximum).
pub const DEFAULT_WORKER_TIMEOUT_SECONDS: f64 = 900.0;
/// Bootstraps per second one worker sustains: what 2 vCPUs do (measured, docs/BENCHMARKS.md).
pub const DEFAULT_WORKER_PBS_PER_SECOND: f64 = 60.0;

/// The time budget of one chunk on a worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkBudget {
    /// The worker function's timeout.
    pub worker_timeout_seconds: f64,
    /// Bootstraps per second one worker sustains.
    pub pbs_per_second: f64,
}

impl Default for ChunkBudget {
    fn default() -> Self {
        Self {
            worker_timeout_seconds: DEFAULT_WORKER_TIMEOUT_SECONDS,
            pbs_per_second: DEFAULT_WORKER_PBS_PER_SECOND,
        }
    }
}

impl ChunkBudget {
    /// The budget from [`TIMEOUT_ENV`] and [`PBS_RATE_ENV`], each defaulting when unset or
    /// not a positive number.
    pub fn from_env() -> Self {
        let read = |name: &str, default: f64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
                .unwrap_or(default)
        };
        Self {
            worker_timeout_seconds: read(TIMEOUT_ENV, DEFAULT_WORKER_TIMEOUT_SECONDS),
            pbs_per_second: read(PBS_RATE_ENV, DEFAULT_WORKER_PBS_PER_SECOND),
        }
    }

    /// Seconds of work a chunk is sized for: a third of the timeout, so a slow worker or a
    /// cold start still finishes.
    pub fn target_chunk_seconds(&self) -> f64 {
        self.worker_timeout_seconds / 3.0
    }

    /// Longest estimated chunk time ingest accepts: 80% of the timeout.
    pub fn max_chunk_seconds(&self) -> f64 {
        self.worker_timeout_seconds * 0.8
    }

    /// Estimated seconds for `records` records of a model costing `pbs_per_record` bootstraps.
    pub fn chunk_seconds(&self, records: u64, pbs_per_record: u64) -> f64 {
        records as f64 * pbs_per_record as f64 / self.pbs_per_second
    }

    /// Records per chunk for a model costing `pbs_per_record` bootstraps, so one chunk takes
    /// about [`ChunkBudget::target_chunk_seconds`]; at most `n` (the records one GLWE holds).
    ///
    /// ```
    /// use fhe_batch_core::budget::ChunkBudget;
    /// let budget = ChunkBudget::default(); // 900 s timeout, 60 bootstraps/s
    /// assert_eq!(budget.records_per_chunk(0, 2048), 2048); // linear: a full GLWE
    /// assert_eq!(budget.records_per_chunk(137, 2048), 131); // a 20-tree random forest
    /// ```
    pub fn records_per_chunk(&self, pbs_per_record: usize, n: usize) -> usize {
        if pbs_per_record == 0 {
            return n;
        }
        let r = (self.target_chunk_seconds() * self.pbs_per_second / pbs_per_record as f64).floor();
        (r as usize).clamp(1, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_sized_from_the_timeout() {
        let b = ChunkBudget::default();
        assert_eq!(b.target_chunk_seconds(), 300.0);
        assert_eq!(b.max_chunk_seconds(), 720.0);
        assert_eq!(b.records_per_chunk(137, 2048), 131);
        assert_eq!(b.records_per_chunk(7, 2048), 2048);
        assert_eq!(b.records_per_chunk(1_000_000, 2048), 1);
        let short = ChunkBudget {
            worker_timeout_seconds: 90.0,
            ..b
        };
        assert_eq!(short.records_per_chunk(137, 2048), 13);
    }
}
