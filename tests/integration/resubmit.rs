//! Resubmission (issue 13, item 4): a FAILED job runs again as a new attempt, either with
//! `retry_job` (`fhe-batch retry`: the same batch, its chunks without a result queued again) or
//! with a corrected upload under the same name (its batch was refused at ingest). A new attempt
//! starts with no failures and tells its end once; a message of an earlier attempt writes
//! nothing; a different batch under the name of a job that ran one is refused visibly.

use crate::common::*;
use fhe_batch_core::ids::JobId;
use fhe_batch_core::job::{ChunkMessage, FailureKind, JobState};
use fhe_batch_core::layout;
use fhe_batch_core::pipeline::{
    ChunkOutcome, DeadLetterOutcome, FaultPoint, FaultProbe, IngestOutcome, RetryError, Worker,
    WorkerConfig, record_dead_letter, retry_job,
};
use fhe_batch_core::ports::ObjectStore;
use fhe_batch_fhe::GlweEvaluator;
use fhe_batch_local::FsStore;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Fails every attempt at one chunk of one job (an injected fault that never passes).
struct FailChunk {
    job: JobId,
    chunk: u32,
}

impl FaultProbe for FailChunk {
    fn check(&self, point: FaultPoint, job: &JobId, chunk: u32) -> Result<(), String> {
        if point == FaultPoint::BeforeRead && *job == self.job && chunk == self.chunk {
            return Err("injected fault that never passes".into());
        }
        Ok(())
    }
}

fn worker(
    env: &Env,
    notes: &Arc<Notifications>,
    probe: Option<FailChunk>,
) -> Arc<Worker<FsStore, GlweEvaluator>> {
    let mut w = Worker::new(
        env.store.clone(),
        GlweEvaluator,
        WorkerConfig { max_receives: 5 },
    )
    .with_notifier(notes.clone());
    if let Some(p) = probe {
        w = w.with_probe(Arc::new(p));
    }
    Arc::new(w)
}

/// Every object of the job records and results, with its bytes.
async fn snapshot(env: &Env) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for prefix in ["jobs/", "results/"] {
        for k in env.store.list(prefix).await.unwrap() {
            let bytes = env.store.get(&k, 1 << 30).await.unwrap();
            out.insert(k, bytes);
        }
    }
    out
}

/// A chunk that keeps failing fails its job; `retry_job` queues exactly that chunk as attempt
/// 2, which succeeds: every record decrypts to the plaintext reference, one notification per
/// attempt, and the attempt-1 message delivered late writes nothing.
#[tokio::test]
async fn a_retried_job_with_a_permanent_chunk_failure_ends_succeeded_and_exact() {
    let env = Env::new().await;
    let notes = Arc::new(Notifications::default());
    let (bytes, q) = iris_batch(3 * 2048 - 7, 70);
    let job = env.upload("flaky", bytes).await;
    let first = queue(Duration::from_secs(600));
    env.ingest(&first, &job).await;
    let faulty = worker(
        &env,
        &notes,
        Some(FailChunk {
            job: job.clone(),
            chunk: 1,
        }),
    );
    let deliveries = receive_all(&first).await;
    assert_eq!(deliveries.len(), 3);
    let mut stale = None;
    for d in &deliveries {
        // Attempt 1's messages are written as before attempts existed: no attempt field.
        assert!(!d.body.contains("attempt"), "{}", d.body);
        // The dead-letter limit's receive: the fault is recorded as the chunk's failure.
        let out = faulty.handle_message(&d.body, 5).await;
        if ChunkMessage::parse(&d.body).unwrap().chunk == 1 {
            assert!(out.is_err(), "{out:?}");
            stale = Some(d.body.clone());
        } else {
            assert!(matches!(out, Ok(ChunkOutcome::Written { .. })), "{out:?}");
        }
    }
    let stale = stale.unwrap();
    let st = env.status(&job).await;
    assert_eq!((st.state, st.attempt), (JobState::Failed, 1), "{st:?}");
    assert_eq!((st.chunks_done, st.chunks_failed), (2, 1));
    assert_eq!(st.failures[0].kind, FailureKind::RetriesExhausted);
    let sent = notes.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0].state, sent[0].attempt), (JobState::Failed, 1));

    let second = queue(Duration::from_secs(600));
    let out = retry_job(&env.store, &second, &job).await.unwrap();
    assert_eq!(
        (
            out.attempt,
            out.chunks_queued,
            out.chunks_kept,
            out.chunks_total
        ),
        (2, 1, 2, 3)
    );
    assert_eq!(out.retried_failures.len(), 1);
    let st = env.status(&job).await;
    assert_eq!((st.state, st.attempt), (JobState::Running, 2), "{st:?}");
    assert!(st.failures.is_empty() && st.chunks_failed == 0, "{st:?}");
    // A second retry while attempt 2 runs is refused.
    let again = retry_job(&env.store, &second, &job).await;
    assert!(
        matches!(
            again,
            Err(RetryError::NotFailed {
                state: JobState::Running,
                ..
            })
        ),
        "{again:?}"
    );

    // Attempt 1's message of the failed chunk, delivered again now (to a worker without the
    // fault, which would write the chunk's result) and dead-lettered: nothing is written.
    let before = snapshot(&env).await;
    let healthy = worker(&env, &notes, None);
    let out = healthy.handle_message(&stale, 1).await.unwrap();
    assert_eq!(
        out,
        ChunkOutcome::Stale {
            job: job.clone(),
            chunk: 1,
            attempt: 1,
            current: 2
        }
    );
    let dead = record_dead_letter(&env.store, &stale, 5).await.unwrap();
    assert!(matches!(dead, DeadLetterOutcome::Stale { .. }), "{dead:?}");
    assert_eq!(
        snapshot(&env).await,
        before,
        "a stale message wrote something"
    );

    let d = receive_all(&second).await;
    assert_eq!(d.len(), 1);
    let m = ChunkMessage::parse(&d[0].body).unwrap();
    assert_eq!((m.chunk, m.attempt), (1, 2));
    // Delivered twice: written once, notified once.
    for _ in 0..2 {
        healthy.handle_message(&d[0].body, 1).await.unwrap();
    }
    env.assert_exact(&job, &q).await;
    let st = env.status(&job).await;
    assert_eq!((st.state, st.attempt), (JobState::Succeeded, 2));
    let sent = notes.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!((sent[1].state, sent[1].attempt), (JobState::Succeeded, 2));
    assert_eq!((sent[1].chunks_done, sent[1].chunks_total), (3, 3));
    // Attempt 1's records stay where they were; attempt 2 has its own.
    for key in [
        layout::chunk_error(&job, 1),
        layout::job_notified(&job),
        layout::attempt_notified(&job, 2),
        layout::attempt_record(&job, 2),
    ] {
        assert!(env.store.size(&key).await.unwrap().is_some(), "{key}");
    }
    // A job that succeeded is not retried.
    let done = retry_job(&env.store, &second, &job).await;
    assert!(
        matches!(
            done,
            Err(RetryError::NotFailed {
                state: JobState::Succeeded,
                ..
            })
        ),
        "{done:?}"
    );
    assert_eq!(
        second.stats().sent,
        1,
        "only the failed chunk was queued again"
    );
}

/// A batch refused at ingest (the most common failure: a damaged file) is corrected by
/// uploading again under the same name: another bad upload is the next attempt (with its own
/// reason), the same refused upload seen again writes nothing, and the good one runs as the
/// attempt after and succeeds. `retry_job` says to upload a corrected batch.
#[tokio::test]
async fn a_corrected_upload_of_a_job_refused_at_ingest_runs_as_the_next_attempt() {
    let env = Env::new().await;
    let notes = Arc::new(Notifications::default());
    let (good, q) = iris_batch(150, 71);
    let job = env.upload("fixme", good[..good.len() - 100].to_vec()).await;
    let jobs = queue(Duration::from_secs(600));
    let out = env.ingest(&jobs, &job).await;
    assert!(
        matches!(&out, IngestOutcome::Rejected { attempt: 1, reason, .. } if reason.contains("header describes")),
        "{out:?}"
    );
    fhe_batch_aws::handlers::notify_refused(&env.store, notes.as_ref(), &[out])
        .await
        .unwrap();
    // The same upload seen again (a repeated event, `fhe-batch run` again): nothing new.
    let before = snapshot(&env).await;
    let out = env.ingest(&jobs, &job).await;
    assert!(
        matches!(&out, IngestOutcome::Ignored { reason, .. } if reason.contains("upload a corrected batch")),
        "{out:?}"
    );
    assert_eq!(snapshot(&env).await, before);
    let refused = retry_job(&env.store, &jobs, &job).await;
    assert!(
        matches!(&refused, Err(e @ RetryError::RejectedAtIngest { next: 2, .. }) if e.to_string().contains("upload a corrected batch")),
        "{refused:?}"
    );

    // Another bad upload: attempt 2, refused with its own reason.
    env.upload("fixme", good[..40].to_vec()).await;
    let out = env.ingest(&jobs, &job).await;
    assert!(
        matches!(&out, IngestOutcome::Rejected { attempt: 2, reason, .. } if reason.contains("truncated")),
        "{out:?}"
    );
    fhe_batch_aws::handlers::notify_refused(&env.store, notes.as_ref(), &[out])
        .await
        .unwrap();
    let st = env.status(&job).await;
    assert_eq!((st.state, st.attempt), (JobState::Failed, 2));
    assert_eq!(st.failures.len(), 1, "only the current attempt's failure");
    assert!(st.failures[0].reason.contains("truncated"), "{st:?}");

    // The corrected batch: attempt 3, queued and run.
    env.upload("fixme", good).await;
    let out = env.ingest(&jobs, &job).await;
    assert_eq!(
        out,
        IngestOutcome::Resubmitted {
            job: job.clone(),
            attempt: 3,
            chunks: 1
        }
    );
    let st = env.status(&job).await;
    assert_eq!((st.state, st.attempt), (JobState::Queued, 3), "{st:?}");
    assert!(st.failures.is_empty(), "{st:?}");
    drain(worker(&env, &notes, None), &jobs, 1).await;
    env.assert_exact(&job, &q).await;
    let sent: Vec<_> = notes
        .sent()
        .into_iter()
        .map(|n| (n.attempt, n.state))
        .collect();
    assert_eq!(
        sent,
        vec![
            (1, JobState::Failed),
            (2, JobState::Failed),
            (3, JobState::Succeeded)
        ]
    );

    // Now that it ran, a bad upload under its name is refused and leaves the job as it is.
    env.upload("fixme", b"not a batch".to_vec()).await;
    let out = env.ingest(&jobs, &job).await;
    assert!(
        matches!(&out, IngestOutcome::Refused { reason, .. } if reason.contains("SUCCEEDED")),
        "{out:?}"
    );
    let st = env.status(&job).await;
    assert_eq!((st.state, st.attempt), (JobState::Succeeded, 3));
    assert_eq!(st.refused_uploads.len(), 1);
    assert!(jobs.is_idle());
}

/// A FAILED job whose batch ran: the same upload seen again queues nothing (retry does), and a
/// different batch is refused visibly with what to do, so results of two batches never mix.
#[tokio::test]
async fn a_different_batch_under_a_failed_job_that_ran_is_refused_with_what_to_do() {
    let env = Env::new().await;
    let notes = Arc::new(Notifications::default());
    let (bytes, _) = iris_batch(150, 72);
    let job = env.upload("ran", bytes.clone()).await;
    let jobs = queue(Duration::from_secs(600));
    env.ingest(&jobs, &job).await;
    let faulty = worker(
        &env,
        &notes,
        Some(FailChunk {
            job: job.clone(),
            chunk: 0,
        }),
    );
    let d = receive_all(&jobs).await;
    assert!(faulty.handle_message(&d[0].body, 5).await.is_err());
    assert_eq!(env.status(&job).await.state, JobState::Failed);
    let out = env.ingest(&jobs, &job).await;
    assert!(
        matches!(&out, IngestOutcome::Ignored { reason, .. } if reason.contains("fhe-batch retry ran")),
        "{out:?}"
    );
    env.upload("ran", iris_batch(150, 73).0).await;
    let out = env.ingest(&jobs, &job).await;
    assert!(
        matches!(&out, IngestOutcome::Refused { reason, .. } if reason.contains("FAILED") && reason.contains("fhe-batch retry ran")),
        "{out:?}"
    );
    let st = env.status(&job).await;
    assert_eq!((st.state, st.attempt), (JobState::Failed, 1));
    assert_eq!(st.refused_uploads.len(), 1, "{st:?}");
    assert_eq!(
        jobs.stats().sent,
        1,
        "nothing queued after the first ingest"
    );
    // With its own batch replaced, the job cannot be retried either.
    let replaced = retry_job(&env.store, &jobs, &job).await;
    assert!(
        matches!(&replaced, Err(RetryError::BatchChanged { .. })),
        "{replaced:?}"
    );
    assert_eq!(env.status(&job).await.attempt, 1, "nothing was recorded");
}
