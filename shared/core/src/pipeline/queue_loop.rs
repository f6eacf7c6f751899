//! The queue loop of a worker outside Lambda (the local pipeline and `fhe-batch worker`):
//! receive, process while holding the message, report, acknowledge or schedule the retry. On
//! AWS the Lambda event source does the receiving and deleting, and
//! `fhe_batch_aws::handlers` schedules retries the same way.

use super::PipelineError;
use super::faults::FaultPoint;
use super::worker::{ChunkOutcome, Worker};
use crate::ports::{ChunkEvaluator, Delivery, JobQueue, ObjectStore, QueueError};
use std::time::Duration;
use tracing::warn;

/// When a failed attempt's message comes back: `first`, doubling with every receive, at most
/// `max` (seconds, then minutes; never the queue's full visibility timeout, which on AWS is 6x
/// the worker timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryDelays {
    pub first: Duration,
    pub max: Duration,
}

impl Default for RetryDelays {
    /// 15 s, 30 s, 1 min, 2 min, 4 min, ... at most 15 min.
    fn default() -> Self {
        Self {
            first: Duration::from_secs(15),
            max: Duration::from_secs(15 * 60),
        }
    }
}

impl RetryDelays {
    /// The delay after the attempt of delivery `receive_count` (1 for the first) failed.
    ///
    /// ```
    /// use fhe_batch_core::pipeline::RetryDelays;
    /// use std::time::Duration;
    /// let d = RetryDelays::default();
    /// assert_eq!(d.after(1), Duration::from_secs(15));
    /// assert_eq!(d.after(3), Duration::from_secs(60));
    /// assert_eq!(d.after(30), Duration::from_secs(900));
    /// ```
    pub fn after(&self, receive_count: u32) -> Duration {
        let doublings = receive_count.saturating_sub(1).min(20);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }
}

/// How the queue loop holds and releases the messages it works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopConfig {
    /// While a chunk is worked on, its message stays hidden for `hold`, renewed every third of
    /// it, so a chunk longer than the queue's visibility timeout is not handed to a second
    /// worker meanwhile. `None`: no renewal.
    pub hold: Option<Duration>,
    /// When a failed attempt's message comes back.
    pub retry: RetryDelays,
}

impl Default for LoopConfig {
    /// For SQS: held 2 minutes at a time, retries after 15 s doubling to 15 min.
    fn default() -> Self {
        Self {
            hold: Some(Duration::from_secs(120)),
            retry: RetryDelays::default(),
        }
    }
}

impl LoopConfig {
    /// For a queue whose visibility timeout is `visibility` (the local pipeline's in-process
    /// queue): held for that long at a time, retries after half of it doubling to 4x.
    pub fn for_visibility(visibility: Duration) -> Self {
        Self {
            hold: Some(visibility),
            retry: RetryDelays {
                first: visibility / 2,
                max: visibility * 4,
            },
        }
    }
}

/// Runs one worker against a queue until `stop()` (checked before each receive) says so: receive,
/// process while holding the message, report (`on_outcome` gets the outcome and its delivery),
/// acknowledge on success; a failed attempt's message comes back after
/// [`RetryDelays::after`] its receive count.
///
/// Queue trouble does not stop the loop: a retryable receive error is waited out with backoff,
/// and a failed acknowledgement only means the message comes back and is answered from the
/// existing result. Only a permanent receive error ends it.
pub async fn run_queue_worker<S, E, Q>(
    worker: &Worker<S, E>,
    queue: &Q,
    config: &LoopConfig,
    stop: impl Fn() -> bool,
    mut on_outcome: impl FnMut(&ChunkOutcome, &Delivery),
) -> Result<(), PipelineError>
where
    S: ObjectStore,
    E: ChunkEvaluator + 'static,
    Q: JobQueue,
{
    let backoff = crate::retry::RetryPolicy::default();
    let mut failed_receives = 0u32;
    loop {
        if stop() {
            return Ok(());
        }
        let deliveries = match queue.receive(1, Duration::from_millis(50)).await {
            Ok(d) => {
                failed_receives = 0;
                d
            }
            Err(QueueError::Backend {
                message,
                retryable: true,
            }) => {
                failed_receives += 1;
                warn!(%message, failed_receives, "receive failed; backing off");
                tokio::time::sleep(backoff.ceiling(failed_receives)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for d in deliveries {
            let outcome = match holding(worker, queue, config, &d).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    let delay = config.retry.after(d.receive_count);
                    warn!(message = %d.message_id, error = %e, ?delay, "left for a retry");
                    if let Err(e) = queue.change_visibility(&d.receipt, delay).await {
                        warn!(message = %d.message_id, error = %e, "could not set the retry delay; the visibility timeout applies");
                    }
                    continue;
                }
            };
            on_outcome(&outcome, &d);
            let (job, chunk) = outcome.chunk();
            if let Some(job) = job
                && let Err(reason) = worker.probe(FaultPoint::BeforeAck, job, chunk)
            {
                warn!(message = %d.message_id, %reason, "not acknowledged");
                continue;
            }
            if let Err(e) = queue.ack(&d.receipt).await {
                warn!(message = %d.message_id, error = %e, "acknowledgement failed; the message will come back");
            }
        }
    }
}

/// Handles one delivery while renewing its visibility every third of `config.hold`.
async fn holding<S, E, Q>(
    worker: &Worker<S, E>,
    queue: &Q,
    config: &LoopConfig,
    d: &Delivery,
) -> Result<ChunkOutcome, super::worker::RetryLater>
where
    S: ObjectStore,
    E: ChunkEvaluator + 'static,
    Q: JobQueue,
{
    let work = worker.handle_message(&d.body, d.receive_count);
    let Some(hold) = config.hold else {
        return work.await;
    };
    tokio::pin!(work);
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = tokio::time::sleep(hold / 3) => {
                if let Err(e) = queue.change_visibility(&d.receipt, hold).await {
                    warn!(message = %d.message_id, error = %e, "could not extend the visibility");
                }
            }
        }
    }
}
