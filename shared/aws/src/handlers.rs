//! The Lambda event handlers, generic over the ports so they are tested without AWS. Each
//! function's `main` only builds clients and hands events to these.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use fhe_batch_core::events::{S3Notification, s3_notification};
use fhe_batch_core::format::BatchLimits;
use fhe_batch_core::ids::{JobId, TenantId};
use fhe_batch_core::layout::{Tenancy, job_for_upload_in};
use fhe_batch_core::pipeline::{
    ChunkEvaluator, Claimant, DeadLetterOutcome, IngestOutcome, NotifyFailure, PipelineError,
    RetryDelays, StatusError, Worker, ingest_object_in, job_status, list_tenant_jobs,
    notify_if_ended, record_dead_letter,
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
    handle_s3_event_in(store, queue, bucket, event, limits, Tenancy::Single).await
}

/// [`handle_s3_event`] on a stack of the given tenancy (`FHE_BATCH_TENANCY`).
pub async fn handle_s3_event_in<S: ObjectStore, Q: JobQueue>(
    store: &S,
    queue: &Q,
    bucket: &str,
    event: serde_json::Value,
    limits: &BatchLimits,
    tenancy: Tenancy,
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
        match ingest_object_in(store, queue, &key, limits, tenancy).await {
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
    notify_refused_in(store, notifier, outcomes, Tenancy::Single).await
}

/// [`notify_refused`] on a stack of the given tenancy.
pub async fn notify_refused_in<S: ObjectStore>(
    store: &S,
    notifier: &dyn Notifier,
    outcomes: &[IngestOutcome],
    tenancy: Tenancy,
) -> Result<(), NotifyFailure> {
    for outcome in outcomes {
        let job = match outcome {
            IngestOutcome::Rejected { job, .. } | IngestOutcome::Refused { job, .. } => job.clone(),
            // A retried event of a refused batch (its notification may not have gone out).
            IngestOutcome::Ignored { key, .. } => match job_for_upload_in(key, tenancy) {
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

/// Whose jobs a status request may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusScope {
    /// A single-tenant stack: every job.
    Stack,
    /// One tenant of a multi-tenant stack: its own jobs only.
    Tenant(TenantId),
}

/// The tenant of a status caller on a multi-tenant stack, from the caller's IAM identity as the
/// Function URL's `AWS_IAM` authorizer reports it (`requestContext.authorizer.iam.userArn`,
/// signed by the caller, so not forgeable): a role (`...:assumed-role/<prefix><tenant>/<session>`)
/// or a user (`...:user/<path>/<prefix><tenant>`) named with the stack's tenant prefix. Anyone
/// else is refused with the reason.
pub fn tenant_of_caller(user_arn: Option<&str>, role_prefix: &str) -> Result<TenantId, String> {
    let Some(arn) = user_arn else {
        return Err("the request carries no IAM identity".into());
    };
    let resource = arn.splitn(6, ':').nth(5).unwrap_or("");
    let name = if let Some(rest) = resource.strip_prefix("assumed-role/") {
        rest.split('/').next()
    } else if let Some(rest) = resource.strip_prefix("user/") {
        rest.rsplit('/').next()
    } else {
        None
    };
    name.and_then(|n| n.strip_prefix(role_prefix))
        .and_then(|t| TenantId::parse(t).ok())
        .ok_or_else(|| {
            format!("the caller is not a tenant of this stack (its role or user name must start with {role_prefix:?})")
        })
}

/// Routes a status request on a single-tenant stack: `GET /jobs` lists jobs, `GET /jobs/{job}`
/// reports one job (404 for an unknown job, 400 for an invalid id).
pub async fn handle_status_request<S: ObjectStore>(
    store: &S,
    method: &str,
    path: &str,
) -> HttpReply {
    handle_status_request_in(store, method, path, Ok(StatusScope::Stack)).await
}

/// Routes a status request for `scope`. A tenant sees only its own jobs: `GET /jobs` lists
/// them, `GET /jobs/{job}` (or `/jobs/{tenant}/{job}` with its own tenant) reports one; another
/// tenant's job answers 404, exactly as a job that does not exist. A caller that is no tenant
/// (`Err`) gets 403 with the reason.
pub async fn handle_status_request_in<S: ObjectStore>(
    store: &S,
    method: &str,
    path: &str,
    scope: Result<StatusScope, String>,
) -> HttpReply {
    if method != "GET" {
        return json_reply(405, serde_json::json!({"error": "only GET is supported"}));
    }
    let scope = match scope {
        Ok(s) => s,
        Err(why) => return json_reply(403, serde_json::json!({ "error": why })),
    };
    let tenant = match &scope {
        StatusScope::Stack => None,
        StatusScope::Tenant(t) => Some(t),
    };
    let path = path.trim_end_matches('/');
    if path == "/jobs" {
        return match list_tenant_jobs(store, tenant).await {
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
    let not_found = |name: &str| {
        json_reply(
            404,
            serde_json::json!({ "error": format!("no job named {name}") }),
        )
    };
    let Some(raw) = decode_s3_key(raw) else {
        return json_reply(400, serde_json::json!({"error": "invalid job id"}));
    };
    let parsed = match tenant {
        None => JobId::parse(&raw),
        Some(t) => match raw.split_once('/') {
            // Another tenant's job does not exist for this caller (not even as "forbidden").
            Some((named, _)) if named != t.as_str() => return not_found(&raw),
            Some(_) => JobId::parse_qualified(&raw),
            None => JobId::parse(&raw).map(|name| JobId::for_tenant(t, &name)),
        },
    };
    let job = match parsed {
        Ok(job) => job,
        Err(e) => return json_reply(400, serde_json::json!({"error": e.to_string()})),
    };
    match job_status(store, &job).await {
        Ok(st) => HttpReply {
            status: 200,
            body: serde_json::to_string(&st).expect("status serializes"),
        },
        Err(StatusError::NotFound(_)) => not_found(&raw),
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
