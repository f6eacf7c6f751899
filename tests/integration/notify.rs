//! Job-end notifications: exactly one per job, whichever of its chunks ends it, with duplicate
//! deliveries and concurrent last chunks; the failure notification carries the reason; a
//! publish that fails is retried with the chunk's message and still goes out once.

use crate::common::*;
use fhe_batch_core::job::JobState;
use fhe_batch_core::pipeline::{Worker, WorkerConfig};
use fhe_batch_fhe::GlweEvaluator;
use std::sync::Arc;
use std::time::Duration;

fn worker(
    env: &Env,
    notes: &Arc<Notifications>,
) -> Arc<Worker<fhe_batch_local::FsStore, GlweEvaluator>> {
    Arc::new(
        Worker::new(env.store.clone(), GlweEvaluator, WorkerConfig::default())
            .with_notifier(notes.clone()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_notification_per_job_with_duplicates_and_concurrent_last_chunks() {
    let env = Env::new().await;
    let notes = Arc::new(Notifications::default());
    let w = worker(&env, &notes);
    let mut jobs = Vec::new();
    for j in 0..6 {
        let (bytes, q) = iris_batch(3 * 2048 - 7, 40 + j);
        let job = env.upload(&format!("n{j}"), bytes).await;
        jobs.push((job, q));
    }
    let queue = queue(Duration::from_secs(600));
    for (job, _) in &jobs {
        env.ingest(&queue, job).await;
    }
    // Every message delivered twice, all at once on 8 tasks: last chunks race each other.
    let deliveries = receive_all(&queue).await;
    assert_eq!(deliveries.len(), 18);
    let mut tasks = Vec::new();
    for d in deliveries.iter().chain(&deliveries).cloned() {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            w.handle_message(&d.body, 1).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sent = notes.sent();
    assert_eq!(sent.len(), jobs.len(), "{sent:?}");
    for (job, q) in &jobs {
        let n: Vec<_> = sent.iter().filter(|n| &n.job == job).collect();
        assert_eq!(n.len(), 1, "{job}");
        assert_eq!(n[0].state, JobState::Succeeded);
        assert_eq!((n[0].chunks_done, n[0].chunks_total), (3, 3));
        assert_eq!(n[0].results_prefix, format!("results/{job}/"));
        env.assert_exact(job, q).await;
    }
}

#[tokio::test]
async fn a_failed_job_is_notified_once_with_its_reason_and_a_failed_publish_is_retried() {
    let env = Env::new().await;
    let notes = Arc::new(Notifications::default());
    notes.fail_next(1);
    let w = worker(&env, &notes);
    let (bytes, _) = iris_batch(150, 50);
    let job = env.upload("doomed", bytes).await;
    let queue = queue(Duration::from_secs(600));
    env.ingest(&queue, &job).await;
    // The batch disappears before the worker reads it: the chunk fails for good.
    fhe_batch_core::ports::ObjectStore::put(
        &env.store,
        &fhe_batch_core::layout::inbox(&job),
        b"gone".to_vec(),
    )
    .await
    .unwrap();
    let d = receive_all(&queue).await;
    // First delivery: failure recorded, the publish fails, so the message is left for a retry.
    assert!(w.handle_message(&d[0].body, 1).await.is_err());
    assert!(notes.sent().is_empty());
    // Redelivered: the failure is already recorded, the notification goes out now, once.
    w.handle_message(&d[0].body, 2).await.unwrap();
    w.handle_message(&d[0].body, 3).await.unwrap();
    let sent = notes.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].state, JobState::Failed);
    assert!(
        sent[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("inbox/doomed.fheb")),
        "{sent:?}"
    );
}

#[tokio::test]
async fn a_publish_that_fails_on_one_channel_is_retried_on_that_channel_only() {
    let env = Env::new().await;
    let (sns, events) = (
        Arc::new(Notifications::default()),
        Arc::new(Notifications::default()),
    );
    events.fail_next(2);
    let fan = fhe_batch_core::pipeline::FanOut::new(vec![
        ("sns", Box::new(sns.clone())),
        ("eventbridge", Box::new(events.clone())),
    ]);
    let w = Arc::new(
        Worker::new(env.store.clone(), GlweEvaluator, WorkerConfig::default())
            .with_notifier(Arc::new(fan)),
    );
    let (bytes, q) = iris_batch(150, 51);
    let job = env.upload("fanned", bytes).await;
    let queue = queue(Duration::from_secs(600));
    env.ingest(&queue, &job).await;
    let d = receive_all(&queue).await;
    assert_eq!(d.len(), 1);
    // SNS gets it, EventBridge fails twice: the message stays for a retry each time.
    assert!(w.handle_message(&d[0].body, 1).await.is_err());
    assert!(w.handle_message(&d[0].body, 2).await.is_err());
    assert_eq!(sns.sent().len(), 1);
    assert!(events.sent().is_empty());
    // The third delivery publishes to EventBridge only; later ones publish nothing.
    w.handle_message(&d[0].body, 3).await.unwrap();
    w.handle_message(&d[0].body, 4).await.unwrap();
    let (a, b) = (sns.sent(), events.sent());
    assert_eq!((a.len(), b.len()), (1, 1), "{a:?} {b:?}");
    assert_eq!(b[0].state, JobState::Succeeded);
    assert_eq!(b[0].job, job);
    env.assert_exact(&job, &q).await;
}
