//! The queue loop of a worker outside Lambda (the local pipeline and `fhe-batch worker`):
//! receive, process, report, acknowledge. On AWS the Lambda event source does this.

use super::PipelineError;
use super::faults::FaultPoint;
use super::worker::{ChunkOutcome, Worker};
use crate::ports::{ChunkEvaluator, Delivery, JobQueue, ObjectStore, QueueError};
use std::time::Duration;
use tracing::warn;

/// Runs one worker against a queue until `stop()` (checked before each receive) says so: receive,
/// process, report (`on_outcome` gets the outcome and its delivery), acknowledge on success; a
/// failed attempt is left for redelivery after the visibility timeout. Used by the local pipeline and `fhe-batch worker`; on AWS the Lambda
/// event source does this.
///
/// Queue trouble does not stop the loop: a retryable receive error is waited out with backoff,
/// and a failed acknowledgement only means the message comes back and is answered from the
/// existing result. Only a permanent receive error ends it.
pub async fn run_queue_worker<S, E, Q>(
    worker: &Worker<S, E>,
    queue: &Q,
    stop: impl Fn() -> bool,
    mut on_outcome: impl FnMut(&ChunkOutcome, &Delivery),
) -> Result<(), PipelineError>
where
    S: ObjectStore,
    E: ChunkEvaluator,
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
            let outcome = match worker.handle_message(&d.body, d.receive_count).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    warn!(message = %d.message_id, error = %e, "left for redelivery");
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
