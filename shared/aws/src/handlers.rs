//! The Lambda event handlers, generic over the ports so they are tested without AWS. Each
//! function's `main` only builds clients and hands events to these.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use fhe_batch_core::events::{S3Notification, s3_notification};
use fhe_batch_core::format::BatchLimits;
use fhe_batch_core::ids::JobId;
use fhe_batch_core::pipeline::{
    ChunkEvaluator, Claimant, DeadLetterOutcome, IngestOutcome, NotifyFailure, PipelineError,
    RetryDelays, StatusError, Worker, ingest_object, job_status, list_jobs, notify_if_ended,
    record_dead_letter,
};
use fhe_batch_core::ports::{JobQueue, Notifier, ObjectStore};
use std::sync::Arc;
use tracing::{error, info, warn};

pub use fhe_batch_core::events::decode_s3_key;

/// Handles an S3 notification for the ingest function: each `ObjectCreated` record is ingested
/// (several per event are possible); the `s3:TestEvent` message and objects of other buckets
/// are ignored. An invalid batch becomes a FAILED job and counts as handled. Returns `Err` only
/// when storage or the queue failed, so the asynchronous invocation is retried (ingest is
/// idempotent) and finally sent to the on-failure destination.
pub async fn handle_s3_event<S: ObjectStore, Q: JobQueue>(
    store: &S,
    queue: &Q,
    bucket: &str,
    event: serde_json::Value,
    limits: &BatchLimits,
) -> Result<Vec<IngestOutcome>, PipelineError> {
    let keys = match s3_notification(&event, bucket) {
        S3Notification::Test => {
            info!("ignoring s3:TestEvent");
            return Ok(Vec::new());
        }
        S3Notification::NotS3(why) => {
            warn!(%why, "not an S3 event; ignored");
            return Ok(Vec::new());
        }
        S3Notification::Objects { keys, skipped } => {
            for why in skipped {
                warn!(%why, "S3 event record ignored");
            }
            keys
        }
    };
    let mut outcomes = Vec::new();
    let mut first_error = None;
    for key in keys {
        match ingest_object(store, queue, &key, limits).await {
            Ok(o) => {
                info!(key = %key, outcome = ?o, "ingested");
                outcomes.push(o);
            }
            Err(e) => {
                error!(key = %key, error = %e, "ingest failed; the invocation will be retried");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(outcomes),
    }
}

/// How often SQS delivered a message (1 when the attribute is missing).
fn receive_count(message: &aws_lambda_events::event::sqs::SqsMessage) -> u32 {
    message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1)
}

/// Handles an SQS batch for the worker function with partial batch failures: a record whose
/// attempt fails (or panics) is reported alone, and (with `retry`) its message comes back after
/// [`RetryDelays::after`] its receive count (15 s, doubling, at most 15 min) instead of the
/// queue's visibility timeout (6x the worker timeout: 90 minutes); the others are deleted by the
/// event source mapping.
pub async fn handle_sqs_event<S, E, Q>(
    worker: Arc<Worker<S, E>>,
    retry: Option<(&Q, RetryDelays)>,
    event: SqsEvent,
) -> SqsBatchResponse
where
    S: ObjectStore + 'static,
    E: ChunkEvaluator + 'static,
    Q: JobQueue,
{
    let mut response = SqsBatchResponse::default();
    for message in event.records {
        let id = message.message_id.clone().unwrap_or_default();
        let body = message.body.clone().unwrap_or_default();
        let receive_count = receive_count(&message);
        let w = worker.clone();
        // A task per record: a panic anywhere in it fails this record only.
        let result =
            tokio::spawn(async move { w.handle_message(&body, receive_count).await }).await;
        let failed = match result {
            Ok(Ok(outcome)) => {
                info!(message = %id, ?outcome, "chunk handled");
                false
            }
            Ok(Err(e)) => {
                warn!(message = %id, error = %e, "chunk will be retried");
                true
            }
            Err(e) => {
                error!(message = %id, error = %e, "chunk handler panicked");
                true
            }
        };
        if failed {
            if let (Some((queue, delays)), Some(receipt)) = (&retry, &message.receipt_handle) {
                let delay = delays.after(receive_count);
                if let Err(e) = queue.change_visibility(receipt, delay).await {
                    warn!(message = %id, error = %e, "could not set the retry delay; the visibility timeout applies");
                } else {
                    info!(message = %id, ?delay, "retry scheduled");
                }
            }
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            response.batch_item_failures.push(f);
        }
    }
    response
}

/// Handles a batch from the dead-letter queue: every chunk message is recorded as its chunk's
/// failure unless the chunk has a result or a failure already, so its job ends FAILED with the
/// reason instead of reading RUNNING forever. A record fails alone (and is retried from the
/// dead-letter queue) only when storage failed.
pub async fn handle_dead_letters<S: ObjectStore>(
    store: &S,
    notifier: Option<&dyn Notifier>,
    event: SqsEvent,
) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for message in event.records {
        let id = message.message_id.clone().unwrap_or_default();
        let body = message.body.clone().unwrap_or_default();
        let receive_count = receive_count(&message);
        // The job queue's receive count is not carried over; the dead-letter limit is 5.
        let deliveries = receive_count.max(5);
        let handled = match record_dead_letter(store, &body, deliveries).await {
            Ok(outcome) => {
                info!(message = %id, ?outcome, "dead letter handled");
                notify_dead_letter(store, notifier, &outcome).await
            }
            Err(e) => Err(e.to_string()),
        };
        match handled {
            Ok(()) => {}
            Err(e) => {
                warn!(message = %id, error = %e, "dead letter will be retried");
                let mut f = BatchItemFailure::default();
                f.item_identifier = id;
                response.batch_item_failures.push(f);
            }
        }
    }
    response
}

/// The job-end notification after a dead letter: the job has failed now (or had before).
async fn notify_dead_letter<S: ObjectStore>(
    store: &S,
    notifier: Option<&dyn Notifier>,
    outcome: &DeadLetterOutcome,
) -> Result<(), String> {
    let (Some(notifier), Some((job, chunk))) = (notifier, outcome.chunk()) else {
        return Ok(());
    };
    if matches!(outcome, DeadLetterOutcome::Stale { .. }) {
        // An earlier attempt's message: the job's current attempt is not ended by it.
        return Ok(());
    }
    notify_if_ended(store, notifier, job, Claimant::Chunk(chunk))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Publishes the end of each job ingest refused (its job is FAILED at once), and of a refused
/// job whose event came again (ingest ignores it; its notification may not have gone out).
pub async fn notify_refused<S: ObjectStore>(
    store: &S,
    notifier: &dyn Notifier,
    outcomes: &[IngestOutcome],
) -> Result<(), NotifyFailure> {
    for outcome in outcomes {
        let job = match outcome {
            IngestOutcome::Rejected { job, .. } | IngestOutcome::Refused { job, .. } => job.clone(),
            // A retried event of a refused batch (its notification may not have gone out).
            IngestOutcome::Ignored { key, .. } => match fhe_batch_core::layout::job_for_upload(key)
            {
                Ok((job, _)) => job,
                Err(_) => continue,
            },
            _ => continue,
        };
        notify_if_ended(store, notifier, &job, Claimant::Ingest).await?;
    }
    Ok(())
}

/// An HTTP answer of the status function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

fn json_reply(status: u16, value: serde_json::Value) -> HttpReply {
    HttpReply {
        status,
        body: value.to_string(),
    }
}

/// Routes a status request: `GET /jobs` lists jobs, `GET /jobs/{job}` reports one job (404 for
/// an unknown job, 400 for an invalid id).
pub async fn handle_status_request<S: ObjectStore>(
    store: &S,
    method: &str,
    path: &str,
) -> HttpReply {
    if method != "GET" {
        return json_reply(405, serde_json::json!({"error": "only GET is supported"}));
    }
    let path = path.trim_end_matches('/');
    if path == "/jobs" {
        return match list_jobs(store).await {
            Ok(jobs) => json_reply(200, serde_json::json!({ "jobs": jobs })),
            Err(e) => {
                error!(error = %e, "listing jobs failed");
                json_reply(
                    503,
                    serde_json::json!({"error": "storage unavailable, retry"}),
                )
            }
        };
    }
    let Some(raw) = path.strip_prefix("/jobs/") else {
        return json_reply(
            404,
            serde_json::json!({"error": "use GET /jobs or GET /jobs/{job}"}),
        );
    };
    let job = match decode_s3_key(raw).as_deref().map(JobId::parse) {
        Some(Ok(job)) => job,
        Some(Err(e)) => return json_reply(400, serde_json::json!({"error": e.to_string()})),
        None => return json_reply(400, serde_json::json!({"error": "invalid job id"})),
    };
    match job_status(store, &job).await {
        Ok(st) => HttpReply {
            status: 200,
            body: serde_json::to_string(&st).expect("status serializes"),
        },
        Err(StatusError::NotFound(job)) => json_reply(
            404,
            serde_json::json!({"error": format!("no job named {job}")}),
        ),
        Err(StatusError::Store(e)) => {
            error!(error = %e, "status failed");
            json_reply(
                503,
                serde_json::json!({"error": "storage unavailable, retry"}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_keys_decode() {
        assert_eq!(
            decode_s3_key("inbox/a+b%2Bc.fheb").unwrap(),
            "inbox/a b+c.fheb"
        );
        assert_eq!(
            decode_s3_key("inbox/claims.fheb").unwrap(),
            "inbox/claims.fheb"
        );
        assert!(decode_s3_key("bad%2").is_none());
        assert!(decode_s3_key("bad%zz").is_none());
        assert!(decode_s3_key("%ff%fe").is_none());
    }
}
