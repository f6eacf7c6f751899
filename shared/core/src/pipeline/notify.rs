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
    /// The channels that already have this notification (a publish that failed part-way).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    published: Vec<String>,
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
    let Some(mut published) = claim(store, job, attempt, me).await? else {
        return Ok(None);
    };
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
    for channel in notifier.channels() {
        if published.iter().any(|p| p == channel) {
            continue;
        }
        if let Err(e) = notifier.publish_to(channel, &notification).await {
            warn!(%job, channel, error = %e, "job-end notification not published; will be retried");
            put_claim(store, job, attempt, me, true, published).await?;
            return Err(e.into());
        }
        published.push(channel.to_string());
    }
    let body = serde_json::to_vec_pretty(&notification).expect("notification serializes");
    store
        .put(&layout::attempt_notified(job, attempt), body)
        .await?;
    info!(%job, attempt, state = %notification.state, "job-end notification published");
    Ok(Some(notification))
}

/// Whether `me` publishes, and to which channels it already has: it created the claim, or the
/// claim is its own failed publish, or a stale claim of its own chunk with nothing published.
async fn claim<S: ObjectStore>(
    store: &S,
    job: &JobId,
    attempt: u32,
    me: Claimant,
) -> Result<Option<Vec<String>>, StoreError> {
    let key = layout::attempt_notify_claim(job, attempt);
    let fresh = Claim {
        by: me.tag(),
        at_unix_ms: now_unix_ms(),
        publish_failed: false,
        published: Vec::new(),
    };
    let bytes = serde_json::to_vec(&fresh).expect("claim serializes");
    if store.put_if_absent(&key, bytes).await? == PutOutcome::Created {
        return Ok(Some(Vec::new()));
    }
    if store
        .size(&layout::attempt_notified(job, attempt))
        .await?
        .is_some()
    {
        return Ok(None);
    }
    let held: Option<Claim> = serde_json::from_slice(&store.get(&key, 4096).await?).ok();
    let Some(held) = held.filter(|c| {
        c.by == me.tag()
            && (c.publish_failed || now_unix_ms().saturating_sub(c.at_unix_ms) > STALE_CLAIM_MS)
    }) else {
        return Ok(None);
    };
    put_claim(store, job, attempt, me, false, held.published.clone()).await?;
    Ok(Some(held.published))
}

async fn put_claim<S: ObjectStore>(
    store: &S,
    job: &JobId,
    attempt: u32,
    me: Claimant,
    publish_failed: bool,
    published: Vec<String>,
) -> Result<(), StoreError> {
    let c = Claim {
        by: me.tag(),
        at_unix_ms: now_unix_ms(),
        publish_failed,
        published,
    };
    let bytes = serde_json::to_vec(&c).expect("claim serializes");
    store
        .put(&layout::attempt_notify_claim(job, attempt), bytes)
        .await
}

/// Publishes to several notifiers, each one channel (SNS topics and an EventBridge bus). A
/// channel that fails stops the publish; its retry goes to the channels that lack it only.
pub struct FanOut {
    channels: Vec<(&'static str, Box<dyn Notifier>)>,
}

impl FanOut {
    /// `channels`: a stable name per notifier (recorded in the claim), in publishing order.
    pub fn new(channels: Vec<(&'static str, Box<dyn Notifier>)>) -> Self {
        Self { channels }
    }

    /// Whether no channel is configured.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.channels.iter().map(|c| c.0))
            .finish()
    }
}

impl Notifier for FanOut {
    fn publish<'a>(
        &'a self,
        n: &'a JobNotification,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), crate::ports::NotifyError>> + Send + 'a>,
    > {
        Box::pin(async move {
            for (_, c) in &self.channels {
                c.publish(n).await?;
            }
            Ok(())
        })
    }

    fn channels(&self) -> Vec<&'static str> {
        self.channels.iter().map(|c| c.0).collect()
    }

    fn publish_to<'a>(
        &'a self,
        channel: &'a str,
        n: &'a JobNotification,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), crate::ports::NotifyError>> + Send + 'a>,
    > {
        Box::pin(async move {
            match self.channels.iter().find(|c| c.0 == channel) {
                Some((_, c)) => c.publish(n).await,
                None => Err(crate::ports::NotifyError(format!(
                    "no notification channel {channel}"
                ))),
            }
        })
    }
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
