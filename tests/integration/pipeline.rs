//! The happy path and the at-least-once guarantees.

use crate::common::*;
use fhe_batch_core::job::{ChunkMessage, JobState};
use fhe_batch_core::layout;
use fhe_batch_core::pipeline::{ChunkOutcome, IngestOutcome};
use fhe_batch_core::ports::{JobQueue, ObjectStore};
use std::time::Duration;

#[tokio::test]
async fn iris_batch_end_to_end_is_exact() {
    let env = Env::new().await;
    let (bytes, q) = iris_batch(150, 0);
    let job = env.upload("iris", bytes).await;
    assert_eq!(env.status(&job).await.state, JobState::Queued);
    let queue = queue(Duration::from_secs(60));
    assert_eq!(
        env.ingest(&queue, &job).await,
        IngestOutcome::Queued {
            job: job.clone(),
            chunks: 1
        }
    );
    let st = env.status(&job).await;
    assert_eq!(
        (st.state, st.chunks_done, st.chunks_total),
        (JobState::Queued, 0, 1)
    );
    drain(env.worker(), &queue, 2).await;
    env.assert_exact(&job, &q).await;
}

#[tokio::test]
async fn multi_chunk_batch_reports_progress_and_is_exact() {
    let env = Env::new().await;
    let (bytes, q) = iris_batch(5000, 1);
    let job = env.upload("big", bytes).await;
    let queue = queue(Duration::from_secs(60));
    env.ingest(&queue, &job).await;
    // Process exactly one chunk: the job is RUNNING 1/3.
    let worker = env.worker();
    let d = queue.receive(1, Duration::ZERO).await.unwrap();
    let outcome = worker.handle_message(&d[0].body, 1).await.unwrap();
    assert!(matches!(outcome, ChunkOutcome::Written { .. }));
    queue.ack(&d[0].receipt).await.unwrap();
    let st = env.status(&job).await;
    assert_eq!(
        (st.state, st.chunks_done, st.chunks_total),
        (JobState::Running, 1, 3)
    );
    assert_eq!(st.records, 5000);
    drain(worker, &queue, 3).await;
    env.assert_exact(&job, &q).await;
}

#[tokio::test]
async fn duplicate_deliveries_change_nothing() {
    let env = Env::new().await;
    let (bytes, q) = iris_batch(5000, 2);
    let job = env.upload("dup", bytes).await;
    let queue = queue(Duration::from_secs(60));
    env.ingest(&queue, &job).await;
    // Every chunk message is delivered three times: a second and third copy are sent.
    let first = receive_all(&queue).await;
    let bodies: Vec<String> = first.iter().map(|d| d.body.clone()).collect();
    queue.send_batch(bodies.clone()).await.unwrap();
    queue.send_batch(bodies).await.unwrap();
    let worker = env.worker();
    let mut written = 0;
    for d in &first {
        if matches!(
            worker.handle_message(&d.body, 1).await.unwrap(),
            ChunkOutcome::Written { .. }
        ) {
            written += 1;
        }
        queue.ack(&d.receipt).await.unwrap();
    }
    assert_eq!(written, 3);
    let before: Vec<Vec<u8>> = snapshot(&env, &job).await;
    let mut duplicates = 0;
    for d in receive_all(&queue).await {
        match worker
            .handle_message(&d.body, d.receive_count)
            .await
            .unwrap()
        {
            ChunkOutcome::AlreadyDone { .. } => duplicates += 1,
            other => panic!("duplicate produced {other:?}"),
        }
        queue.ack(&d.receipt).await.unwrap();
    }
    assert_eq!(duplicates, 6);
    assert_eq!(
        snapshot(&env, &job).await,
        before,
        "no result was overwritten"
    );
    env.assert_exact(&job, &q).await;
}

async fn snapshot(env: &Env, job: &fhe_batch_core::ids::JobId) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for k in env.store.list(&layout::results_prefix(job)).await.unwrap() {
        out.push(env.store.get(&k, 1 << 30).await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_dies_mid_chunk_is_replaced_after_the_visibility_timeout() {
    let env = Env::new().await;
    let (bytes, q) = iris_batch(3000, 3);
    let job = env.upload("crash", bytes).await;
    let queue = queue(Duration::from_secs(30));
    env.ingest(&queue, &job).await;
    // A worker takes both chunks and dies: no result, no acknowledgement.
    let taken = receive_all(&queue).await;
    assert_eq!(taken.len(), 2);
    drop(taken);
    assert_eq!(env.status(&job).await.chunks_done, 0);
    // Nothing is visible until the timeout; then the messages come back.
    assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty());
    tokio::time::advance(Duration::from_secs(31)).await;
    let again = queue.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|d| d.receive_count == 2));
    let worker = env.worker();
    for d in &again {
        worker
            .handle_message(&d.body, d.receive_count)
            .await
            .unwrap();
        queue.ack(&d.receipt).await.unwrap();
    }
    assert!(queue.is_idle());
    env.assert_exact(&job, &q).await;
}

#[tokio::test]
async fn a_repeated_upload_event_requeues_only_unfinished_chunks() {
    let env = Env::new().await;
    let (bytes, q) = iris_batch(5000, 4);
    let job = env.upload("again", bytes).await;
    let queue = queue(Duration::from_secs(60));
    env.ingest(&queue, &job).await;
    let worker = env.worker();
    let d = queue.receive(1, Duration::ZERO).await.unwrap();
    worker.handle_message(&d[0].body, 1).await.unwrap();
    queue.ack(&d[0].receipt).await.unwrap();
    // The same S3 event again: the manifest exists; the two unfinished chunks are re-sent.
    assert_eq!(
        env.ingest(&queue, &job).await,
        IngestOutcome::Requeued {
            job: job.clone(),
            chunks: 2
        }
    );
    drain(worker, &queue, 2).await;
    env.assert_exact(&job, &q).await;
}

#[tokio::test]
async fn messages_carry_pointers_not_ciphertext() {
    let env = Env::new().await;
    let (bytes, _) = iris_batch(150, 5);
    let job = env.upload("claim", bytes).await;
    let queue = queue(Duration::from_secs(60));
    env.ingest(&queue, &job).await;
    let d = queue.receive(1, Duration::ZERO).await.unwrap();
    assert!(d[0].body.len() < 1024, "{} bytes", d[0].body.len());
    let m = ChunkMessage::parse(&d[0].body).unwrap();
    assert_eq!(m.batch_key, layout::inbox(&job));
}

/// `aws s3 cp claims.v2.fheb s3://BUCKET/inbox/`: a file name that is not a job id is not
/// ignored; it runs as the job the documented rule names (`claims-v2`).
#[tokio::test]
async fn an_upload_whose_name_is_not_a_job_id_runs_under_the_mapped_name() {
    let env = Env::new().await;
    let (bytes, q) = iris_batch(150, 3);
    let key = "inbox/claims.v2.fheb";
    env.store.put(key, bytes).await.unwrap();
    let queue = queue(Duration::from_secs(60));
    let job = fhe_batch_core::ids::JobId::parse("claims-v2").unwrap();
    let out = fhe_batch_core::pipeline::ingest_object(
        &env.store,
        &queue,
        key,
        &fhe_batch_core::format::BatchLimits::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        IngestOutcome::Queued {
            job: job.clone(),
            chunks: 1
        }
    );
    drain(env.worker(), &queue, 1).await;
    env.assert_exact(&job, &q).await;
}

/// A different batch uploaded under the name of an existing job is not run, and not silently:
/// the job's status lists the refused upload with what to do instead. A repeated event of the
/// same upload adds nothing.
#[tokio::test]
async fn a_different_upload_under_an_existing_job_name_is_refused_visibly() {
    let env = Env::new().await;
    let (first, q) = iris_batch(150, 60);
    let job = env.upload("claims", first).await;
    let queue = queue(Duration::from_secs(60));
    env.ingest(&queue, &job).await;
    drain(env.worker(), &queue, 1).await;
    let (second, _) = iris_batch(150, 61);
    env.upload("claims", second).await;
    for _ in 0..2 {
        let out = env.ingest(&queue, &job).await;
        assert!(
            matches!(&out, IngestOutcome::Refused { reason, .. } if reason.contains("SUCCEEDED")),
            "{out:?}"
        );
    }
    assert!(queue.is_idle());
    let st = env.status(&job).await;
    assert_eq!((st.state, st.attempt), (JobState::Succeeded, 1));
    assert_eq!(st.refused_uploads.len(), 1, "{st:?}");
    assert!(st.refused_uploads[0].contains("upload it under a new job name"));
    assert!(st.refused_uploads[0].contains("while job claims is SUCCEEDED"));
    // The first batch's results are untouched.
    env.store
        .put(&layout::inbox(&job), iris_batch(150, 60).0)
        .await
        .unwrap();
    env.assert_exact(&job, &q).await;
}
