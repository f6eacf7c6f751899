//! A fault-injecting adapter for either port: S3 and SQS misbehaviour on demand, for the
//! reliability tests and the chaos benchmark.
//!
//! At the configured rate, a call fails the way the services fail: throttling (503 SlowDown),
//! a server error (500), a timeout (after a delay) or a connection reset. A timeout or a reset
//! may strike after the service did the work (the answer was lost on the way back), so a write
//! can have happened although the caller saw an error: the ambiguity the pipeline's create-once
//! writes and idempotent workers must absorb. Every injected error is marked retryable, as the
//! AWS adapters mark those errors. The draws come from a seeded generator, so a failing run can
//! be repeated.

use fhe_batch_core::ports::{Delivery, JobQueue, ObjectStore, PutOutcome, QueueError, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The kinds of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Throttled,
    ServerError,
    Timeout,
    Reset,
}

impl Fault {
    fn message(self) -> &'static str {
        match self {
            Fault::Throttled => "injected: 503 SlowDown (throttled)",
            Fault::ServerError => "injected: 500 InternalError",
            Fault::Timeout => "injected: operation timed out",
            Fault::Reset => "injected: connection reset by peer",
        }
    }
}

/// How often and how faults strike.
#[derive(Debug, Clone, Copy)]
pub struct ChaosConfig {
    /// Share of calls that fail, in [0, 1].
    pub rate: f64,
    /// How long a timed-out call hangs before failing.
    pub timeout: Duration,
    /// Seed of the draws.
    pub seed: u64,
}

/// Counts of what was injected.
#[derive(Debug, Default)]
pub struct ChaosStats {
    pub calls: AtomicU64,
    pub throttled: AtomicU64,
    pub server_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub resets: AtomicU64,
    /// Faults that struck after the operation took effect.
    pub applied_then_failed: AtomicU64,
}

impl ChaosStats {
    pub fn faults(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
            + self.server_errors.load(Ordering::Relaxed)
            + self.timeouts.load(Ordering::Relaxed)
            + self.resets.load(Ordering::Relaxed)
    }
}

/// A port that fails at random. Clones share the generator and the statistics.
#[derive(Debug, Clone)]
pub struct Chaos<T> {
    inner: T,
    config: ChaosConfig,
    rng: Arc<Mutex<u64>>,
    stats: Arc<ChaosStats>,
}

/// What to do with one call.
enum Plan {
    Pass,
    /// Fail without doing the work.
    FailBefore(Fault),
    /// Do the work, then fail.
    FailAfter(Fault),
}

impl<T> Chaos<T> {
    pub fn new(inner: T, config: ChaosConfig) -> Self {
        Self {
            inner,
            config,
            rng: Arc::new(Mutex::new(
                config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            )),
            stats: Arc::new(ChaosStats::default()),
        }
    }

    pub fn inner(&self) -> &T {
        &self.inner
    }

    pub fn stats(&self) -> &Arc<ChaosStats> {
        &self.stats
    }

    fn draw(&self) -> f64 {
        let mut s = self.rng.lock().expect("chaos rng");
        // splitmix64
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn plan(&self) -> Plan {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        if self.draw() >= self.config.rate {
            return Plan::Pass;
        }
        let kind = match (self.draw() * 4.0) as u32 {
            0 => Fault::Throttled,
            1 => Fault::ServerError,
            2 => Fault::Timeout,
            _ => Fault::Reset,
        };
        let counter = match kind {
            Fault::Throttled => &self.stats.throttled,
            Fault::ServerError => &self.stats.server_errors,
            Fault::Timeout => &self.stats.timeouts,
            Fault::Reset => &self.stats.resets,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match kind {
            Fault::Timeout | Fault::Reset if self.draw() < 0.5 => {
                self.stats
                    .applied_then_failed
                    .fetch_add(1, Ordering::Relaxed);
                Plan::FailAfter(kind)
            }
            _ => Plan::FailBefore(kind),
        }
    }

    async fn strike(&self, fault: Fault) {
        if fault == Fault::Timeout {
            tokio::time::sleep(self.config.timeout).await;
        }
    }

    /// Runs `call` under the plan for this call; `err` builds the adapter's error.
    async fn call<R, E, F>(&self, call: F, err: impl Fn(&'static str) -> E) -> Result<R, E>
    where
        F: std::future::Future<Output = Result<R, E>>,
    {
        let fault = match self.plan() {
            Plan::Pass => return call.await,
            Plan::FailBefore(f) => f,
            Plan::FailAfter(f) => {
                let _ = call.await;
                f
            }
        };
        self.strike(fault).await;
        Err(err(fault.message()))
    }

    async fn store_call<R, F>(&self, key: &str, call: F) -> Result<R, StoreError>
    where
        F: std::future::Future<Output = Result<R, StoreError>>,
    {
        self.call(call, |message| StoreError::Backend {
            key: key.to_string(),
            message: message.into(),
            retryable: true,
        })
        .await
    }

    async fn queue_call<R, F>(&self, call: F) -> Result<R, QueueError>
    where
        F: std::future::Future<Output = Result<R, QueueError>>,
    {
        self.call(call, |message| QueueError::Backend {
            message: message.into(),
            retryable: true,
        })
        .await
    }
}

impl<S: ObjectStore> ObjectStore for Chaos<S> {
    async fn get(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, StoreError> {
        self.store_call(key, self.inner.get(key, max_bytes)).await
    }
    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.store_call(key, self.inner.get_range(key, start, len))
            .await
    }
    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.store_call(key, self.inner.size(key)).await
    }
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.store_call(key, self.inner.put(key, bytes)).await
    }
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        self.store_call(key, self.inner.put_if_absent(key, bytes))
            .await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.store_call(prefix, self.inner.list(prefix)).await
    }
}

impl<Q: JobQueue> JobQueue for Chaos<Q> {
    async fn send_batch(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        self.queue_call(self.inner.send_batch(bodies)).await
    }
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.queue_call(self.inner.receive(max, wait)).await
    }
    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        self.queue_call(self.inner.ack(receipt)).await
    }
    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        self.queue_call(self.inner.change_visibility(receipt, timeout))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemQueue, MemQueueConfig};

    #[tokio::test(start_paused = true)]
    async fn injects_at_the_configured_rate_and_sometimes_after_the_work() {
        let q = MemQueue::new(MemQueueConfig::default());
        let chaos = Chaos::new(
            q.clone(),
            ChaosConfig {
                rate: 0.2,
                timeout: Duration::from_millis(100),
                seed: 7,
            },
        );
        let mut failed = 0;
        for i in 0..5000 {
            if chaos.send_batch(vec![format!("m{i}")]).await.is_err() {
                failed += 1;
            }
        }
        let s = chaos.stats();
        assert_eq!(s.calls.load(Ordering::Relaxed), 5000);
        assert_eq!(s.faults(), failed);
        assert!((900..1100).contains(&failed), "{failed} of 5000");
        let applied = s.applied_then_failed.load(Ordering::Relaxed);
        assert!(applied > 100, "{applied}");
        // Sent = passed calls + calls that failed after doing the work.
        assert_eq!(q.stats().sent, 5000 - failed + applied);
        for c in [&s.throttled, &s.server_errors, &s.timeouts, &s.resets] {
            assert!(c.load(Ordering::Relaxed) > 150);
        }
    }
}
