//! Bounded retries with exponential backoff and full jitter, as a wrapper around either port.
//!
//! [`Retrying`] retries only errors that say a retry may help (`retryable: true`: throttling,
//! 5xx answers, timeouts, dropped connections) and gives up after
//! [`RetryPolicy::max_attempts`] calls, returning the last error; the pipeline then leaves the
//! message for redelivery, and the queue's dead-letter limit bounds that second loop too.
//!
//! Retrying is safe for every operation of the ports because each is idempotent or
//! create-once: a `put_if_absent` whose first call wrote but reported a timeout answers
//! `AlreadyExists` on the retry, which the worker reads as "this chunk is done"; a repeated
//! `send_batch` can only duplicate messages, which at-least-once delivery allows.

use crate::ports::{Delivery, JobQueue, ObjectStore, PutOutcome, QueueError, StoreError};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// How many times to call, and how long to wait between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls in all, the first included (1 disables retries).
    pub max_attempts: u32,
    /// The backoff ceiling before the first retry; it doubles on each retry.
    pub base_delay: Duration,
    /// No wait is longer than this.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 6 calls, waits drawn from [0, 50 ms], [0, 100 ms], ... capped at 2 s: at most 1.55 s of
    /// waiting per operation, well inside a worker's visibility timeout.
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The ceiling of the wait before retry number `retry` (1-based).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32 << (retry.saturating_sub(1)).min(16);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The longest total wait one operation can spend in backoff.
    pub fn worst_case_wait(&self) -> Duration {
        (1..self.max_attempts).map(|r| self.ceiling(r)).sum()
    }
}

/// What the retry layer did, for tests, benchmarks and logs.
#[derive(Debug, Default)]
pub struct RetryStats {
    /// Operations started.
    pub operations: AtomicU64,
    /// Calls after the first.
    pub retries: AtomicU64,
    /// Operations that ran out of attempts on a retryable error.
    pub exhausted: AtomicU64,
    /// The most calls any one operation needed.
    pub max_calls: AtomicU32,
    /// Total backoff time, in microseconds.
    pub backoff_us: AtomicU64,
}

/// A port wrapped with bounded retries. Clones share their statistics.
#[derive(Debug, Clone)]
pub struct Retrying<T> {
    inner: T,
    policy: RetryPolicy,
    stats: Arc<RetryStats>,
}

impl<T> Retrying<T> {
    pub fn new(inner: T, policy: RetryPolicy) -> Self {
        Self {
            inner,
            policy,
            stats: Arc::new(RetryStats::default()),
        }
    }

    pub fn inner(&self) -> &T {
        &self.inner
    }

    pub fn stats(&self) -> &Arc<RetryStats> {
        &self.stats
    }

    async fn run<R, Er, F, Fut>(
        &self,
        mut call: F,
        retryable: impl Fn(&Er) -> bool,
    ) -> Result<R, Er>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<R, Er>>,
    {
        self.stats.operations.fetch_add(1, Ordering::Relaxed);
        let mut calls = 0u32;
        loop {
            calls += 1;
            let result = call().await;
            let retry = match &result {
                Err(e) if retryable(e) => calls < self.policy.max_attempts.max(1),
                _ => false,
            };
            if !retry {
                self.stats.max_calls.fetch_max(calls, Ordering::Relaxed);
                if matches!(&result, Err(e) if retryable(e)) {
                    self.stats.exhausted.fetch_add(1, Ordering::Relaxed);
                }
                return result;
            }
            let ceiling = self.policy.ceiling(calls);
            let wait = ceiling.mul_f64(jitter());
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            self.stats
                .backoff_us
                .fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }
}

/// A uniform draw in [0, 1) for jitter (not for cryptography): a per-thread xorshift seeded
/// from the clock and the thread, so concurrent workers do not retry in lockstep.
fn jitter() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            let addr = &t as *const u64 as u64;
            (t ^ addr.rotate_left(32)) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

fn queue_retryable(e: &QueueError) -> bool {
    matches!(
        e,
        QueueError::Backend {
            retryable: true,
            ..
        }
    )
}

impl<S: ObjectStore> ObjectStore for Retrying<S> {
    async fn get(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, StoreError> {
        self.run(|| self.inner.get(key, max_bytes), StoreError::is_retryable)
            .await
    }
    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.run(
            || self.inner.get_range(key, start, len),
            StoreError::is_retryable,
        )
        .await
    }
    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.run(|| self.inner.size(key), StoreError::is_retryable)
            .await
    }
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.run(
            || self.inner.put(key, bytes.clone()),
            StoreError::is_retryable,
        )
        .await
    }
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        self.run(
            || self.inner.put_if_absent(key, bytes.clone()),
            StoreError::is_retryable,
        )
        .await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.run(|| self.inner.list(prefix), StoreError::is_retryable)
            .await
    }
}

impl<Q: JobQueue> JobQueue for Retrying<Q> {
    async fn send_batch(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        self.run(|| self.inner.send_batch(bodies.clone()), queue_retryable)
            .await
    }
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.run(|| self.inner.receive(max, wait), queue_retryable)
            .await
    }
    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        self.run(|| self.inner.ack(receipt), queue_retryable).await
    }
    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        self.run(
            || self.inner.change_visibility(receipt, timeout),
            queue_retryable,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Fails the first `fail` calls with the given error, then answers.
    struct Scripted {
        fail: Mutex<u32>,
        retryable: bool,
        calls: AtomicU32,
    }

    impl Scripted {
        fn new(fail: u32, retryable: bool) -> Self {
            Self {
                fail: Mutex::new(fail),
                retryable,
                calls: AtomicU32::new(0),
            }
        }
        fn next(&self, key: &str) -> Result<(), StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut f = self.fail.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return Err(StoreError::Backend {
                    key: key.into(),
                    message: "503 SlowDown".into(),
                    retryable: self.retryable,
                });
            }
            Ok(())
        }
    }

    impl ObjectStore for Scripted {
        async fn get(&self, key: &str, _: u64) -> Result<Vec<u8>, StoreError> {
            self.next(key).map(|_| b"ok".to_vec())
        }
        async fn get_range(&self, key: &str, _: u64, _: u64) -> Result<Vec<u8>, StoreError> {
            self.next(key).map(|_| Vec::new())
        }
        async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
            self.next(key).map(|_| Some(2))
        }
        async fn put(&self, key: &str, _: Vec<u8>) -> Result<(), StoreError> {
            self.next(key)
        }
        async fn put_if_absent(&self, key: &str, _: Vec<u8>) -> Result<PutOutcome, StoreError> {
            self.next(key).map(|_| PutOutcome::Created)
        }
        async fn list(&self, key: &str) -> Result<Vec<String>, StoreError> {
            self.next(key).map(|_| Vec::new())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_with_growing_bounded_waits() {
        let policy = RetryPolicy::default();
        let s = Retrying::new(Scripted::new(4, true), policy);
        let start = tokio::time::Instant::now();
        assert_eq!(s.get("k", 10).await.unwrap(), b"ok");
        assert_eq!(s.inner().calls.load(Ordering::SeqCst), 5);
        assert_eq!(s.stats().retries.load(Ordering::SeqCst), 4);
        assert_eq!(s.stats().max_calls.load(Ordering::SeqCst), 5);
        let waited = start.elapsed();
        assert!(
            waited <= policy.ceiling(1) + policy.ceiling(2) + policy.ceiling(3) + policy.ceiling(4)
        );
        // All the waiting is backoff (the timer rounds each sleep up to a millisecond).
        let backoff = Duration::from_micros(s.stats().backoff_us.load(Ordering::SeqCst));
        assert!(backoff > Duration::ZERO);
        assert!(waited >= backoff && waited - backoff <= Duration::from_millis(4));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_with_the_last_error() {
        let s = Retrying::new(Scripted::new(100, true), RetryPolicy::default());
        let e = s.size("k").await.unwrap_err();
        assert!(e.is_retryable());
        assert_eq!(s.inner().calls.load(Ordering::SeqCst), 6);
        assert_eq!(s.stats().exhausted.load(Ordering::SeqCst), 1);
        assert!(tokio::time::Instant::now().elapsed() <= RetryPolicy::default().worst_case_wait());
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let s = Retrying::new(Scripted::new(1, false), RetryPolicy::default());
        assert!(s.put("k", vec![1]).await.is_err());
        assert_eq!(s.inner().calls.load(Ordering::SeqCst), 1);
        assert_eq!(s.stats().retries.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn ceilings_double_and_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_millis(50));
        assert_eq!(p.ceiling(2), Duration::from_millis(100));
        assert_eq!(p.ceiling(7), Duration::from_secs(2));
        assert_eq!(p.ceiling(40), Duration::from_secs(2));
        assert_eq!(
            p.worst_case_wait(),
            Duration::from_millis(50 + 100 + 200 + 400 + 800)
        );
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
