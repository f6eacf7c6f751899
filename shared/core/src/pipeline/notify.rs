//! Job-end notifications, published once per job attempt: when a job's last chunk result or
//! its failure is written, whoever wrote it checks whether the job has ended, and the one that
//! creates `jobs/<job>/notify-claim` (create-once; `jobs/<job>/attempt-<n>/notify-claim` for a
//! later attempt) publishes; `notified.json` beside it is written after the publish succeeded.
//! Duplicate deliveries and concurrent last chunks find the claim taken and publish nothing; a
//! retried job's next attempt has its own claim, so it tells its end once more.
//!
//! A notification is never lost: a publish that fails marks the claim, and the claimant's
//! redelivered message publishes again; a claimant that died between its claim and its publish
//! (the claim is older than [`STALE_CLAIM_MS`] and nothing was published) is taken over by the
//! next delivery of its chunk. What can publish twice: a crash between the publish and the
//! `notified.json` write, or two deliveries of the claimant's own chunk retrying a failed publish
//! at the same moment.

use super::now_unix_ms;
use super::status::job_status;
use crate::ids::JobId;
use crate::job::{JobNotification, JobState};
use crate::layout;
use crate::ports::{Notifier, ObjectStore, PutOutcome, StoreError};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// A claim older than this with nothing published is taken to be its claimant's crash.
pub const STALE_CLAIM_MS: u64 = 120_000;

/// `jobs/<job>/notify-claim`.
#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    by: String,
    at_unix_ms: u64,
    publish_failed: bool,
}

/// Who claims the notification: a chunk's worker, ingest (a refused batch), or the
/// dead-letter handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimant {
    Chunk(u32),
    Ingest,
}

impl Claimant {
    fn tag(self) -> String {
        match self {
            Claimant::Chunk(c) => format!("chunk {c}"),
            Claimant::Ingest => "ingest".into(),
        }
    }
}

/// Why a notification was not (yet) published: storage trouble, or the publish itself. Either
/// way the caller's attempt should be retried (the result or failure is already written).
#[derive(Debug, thiserror::Error)]
pub enum NotifyFailure {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] crate::ports::NotifyError),
}

/// Publishes the end notification of the job's current attempt if it has ended and nobody
/// else claimed it. Returns the notification when this call published it.
pub async fn notify_if_ended<S: ObjectStore>(
    store: &S,
    notifier: &dyn Notifier,
    job: &JobId,
    me: Claimant,
) -> Result<Option<JobNotification>, NotifyFailure> {
    notify_attempt_if_ended(store, notifier, job, None, me).await
}

/// As [`notify_if_ended`], for the end of attempt `attempt` only: nothing is published when
/// the job has moved on to a later attempt (a chunk of an earlier attempt does not end the
/// current one).
pub async fn notify_attempt_if_ended<S: ObjectStore>(
    store: &S,
    notifier: &dyn Notifier,
    job: &JobId,
    attempt: Option<u32>,
    me: Claimant,
) -> Result<Option<JobNotification>, NotifyFailure> {
    let status = match job_status(store, job).await {
        Ok(s) => s,
        Err(super::StatusError::NotFound(_)) => return Ok(None),
        Err(super::StatusError::Store(e)) => return Err(e.into()),
    };
    if !matches!(status.state, JobState::Succeeded | JobState::Failed)
        || attempt.is_some_and(|a| a != status.attempt)
    {
        return Ok(None);
    }
    let attempt = status.attempt;
    if !claim(store, job, attempt, me).await? {
        return Ok(None);
    }
    let notification = JobNotification {
        job: job.clone(),
        attempt,
        state: status.state,
        chunks_total: status.chunks_total,
        chunks_done: status.chunks_done,
        chunks_failed: status.chunks_failed,
        records: status.records,
        results_prefix: status.results_prefix.clone(),
        reason: status.failures.first().map(|f| f.reason.clone()),
        at_unix_ms: now_unix_ms(),
    };
    if let Err(e) = notifier.publish(&notification).await {
        warn!(%job, error = %e, "job-end notification not published; will be retried");
        put_claim(store, job, attempt, me, true).await?;
        return Err(e.into());
    }
    let body = serde_json::to_vec_pretty(&notification).expect("notification serializes");
    store
        .put(&layout::attempt_notified(job, attempt), body)
        .await?;
    info!(%job, attempt, state = %notification.state, "job-end notification published");
    Ok(Some(notification))
}

/// Whether `me` publishes: it created the claim, or the claim is its own failed publish, or a
/// stale claim of its own chunk with nothing published.
async fn claim<S: ObjectStore>(
    store: &S,
    job: &JobId,
    attempt: u32,
    me: Claimant,
) -> Result<bool, StoreError> {
    let key = layout::attempt_notify_claim(job, attempt);
    let fresh = Claim {
        by: me.tag(),
        at_unix_ms: now_unix_ms(),
        publish_failed: false,
    };
    let bytes = serde_json::to_vec(&fresh).expect("claim serializes");
    if store.put_if_absent(&key, bytes).await? == PutOutcome::Created {
        return Ok(true);
    }
    if store
        .size(&layout::attempt_notified(job, attempt))
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let held: Option<Claim> = serde_json::from_slice(&store.get(&key, 4096).await?).ok();
    let retry = held.is_some_and(|c| {
        c.by == me.tag()
            && (c.publish_failed || now_unix_ms().saturating_sub(c.at_unix_ms) > STALE_CLAIM_MS)
    });
    if retry {
        put_claim(store, job, attempt, me, false).await?;
    }
    Ok(retry)
}

async fn put_claim<S: ObjectStore>(
    store: &S,
    job: &JobId,
    attempt: u32,
    me: Claimant,
    publish_failed: bool,
) -> Result<(), StoreError> {
    let c = Claim {
        by: me.tag(),
        at_unix_ms: now_unix_ms(),
        publish_failed,
    };
    let bytes = serde_json::to_vec(&c).expect("claim serializes");
    store
        .put(&layout::attempt_notify_claim(job, attempt), bytes)
        .await
}

/// A notifier that publishes nothing (no topics configured).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoNotifier;

impl Notifier for NoNotifier {
    fn publish<'a>(
        &'a self,
        _: &'a JobNotification,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), crate::ports::NotifyError>> + Send + 'a>,
    > {
        Box::pin(async { Ok(()) })
    }
}

/// A notifier that keeps what it publishes (the local runner's report, tests). `fail_next`
/// makes that many publishes fail first.
#[derive(Debug, Default)]
pub struct CollectingNotifier {
    sent: std::sync::Mutex<Vec<JobNotification>>,
    fail_next: std::sync::atomic::AtomicU32,
}

impl CollectingNotifier {
    /// What was published so far.
    pub fn sent(&self) -> Vec<JobNotification> {
        self.sent.lock().expect("lock").clone()
    }

    /// Takes what was published so far.
    pub fn take(&self) -> Vec<JobNotification> {
        std::mem::take(&mut *self.sent.lock().expect("lock"))
    }

    /// Makes the next `n` publishes fail.
    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Notifier for CollectingNotifier {
    fn publish<'a>(
        &'a self,
        n: &'a JobNotification,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), crate::ports::NotifyError>> + Send + 'a>,
    > {
        Box::pin(async move {
            use std::sync::atomic::Ordering;
            if self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
                .is_ok()
            {
                return Err(crate::ports::NotifyError("injected failure".into()));
            }
            self.sent.lock().expect("lock").push(n.clone());
            Ok(())
        })
    }
}
