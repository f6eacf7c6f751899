//! Several tenants on one stack (`FHE_BATCH_TENANCY=multi`): each uploads to
//! `inbox/<tenant>/`, its jobs, results and evaluation keys live under its own prefixes, two
//! tenants may use the same job name, and the status function answers each caller for its own
//! tenant only. Driven through the Lambda handlers over the embedded store and queue.

use crate::common::*;
use fhe_batch_aws::handlers::{
    StatusScope, handle_s3_event_in, handle_status_request_in, tenant_of_caller,
};
use fhe_batch_core::format::{BatchLimits, ChunkLayout};
use fhe_batch_core::ids::{JobId, TenantId};
use fhe_batch_core::job::JobState;
use fhe_batch_core::layout::{self, Tenancy};
use fhe_batch_core::pipeline::{IngestOutcome, Worker, WorkerConfig};
use fhe_batch_core::ports::ObjectStore;
use fhe_batch_fhe::FheEvaluator;
use std::sync::Arc;
use std::time::Duration;

const BUCKET: &str = "fhe-batch-local";

/// The S3 event `aws s3 cp` of `key` would send.
fn s3_put(key: &str) -> serde_json::Value {
    serde_json::json!({"Records": [{
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": BUCKET}, "object": {"key": key, "size": 1}}
    }]})
}

/// Uploads `bytes` at `key` and hands ingest the event, on a multi-tenant stack.
async fn upload_and_ingest(
    env: &Env,
    q: &fhe_batch_local::MemQueue,
    key: &str,
    bytes: Vec<u8>,
) -> Vec<IngestOutcome> {
    env.store.put(key, bytes).await.unwrap();
    handle_s3_event_in(
        &env.store,
        q,
        BUCKET,
        s3_put(key),
        &BatchLimits::default(),
        Tenancy::Multi,
    )
    .await
    .unwrap()
}

fn tenant(t: &str) -> Result<StatusScope, String> {
    Ok(StatusScope::Tenant(TenantId::parse(t).unwrap()))
}

async fn status(
    env: &Env,
    scope: Result<StatusScope, String>,
    path: &str,
) -> (u16, serde_json::Value) {
    let r = handle_status_request_in(&env.store, "GET", path, scope).await;
    (r.status, serde_json::from_str(&r.body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_share_a_stack_without_seeing_each_other() {
    let env = Env::new().await;
    let q = queue(Duration::from_secs(60));
    // Two tenants upload a batch under the same name; a third object names no tenant.
    let (acme_bytes, acme_q) = iris_batch(2100, 61);
    let (globex_bytes, globex_q) = iris_batch(300, 62);
    let mut outcomes = Vec::new();
    for (key, bytes) in [
        ("inbox/acme/claims.fheb", acme_bytes),
        ("inbox/globex/claims.fheb", globex_bytes.clone()),
        ("inbox/claims.fheb", globex_bytes),
    ] {
        outcomes.extend(upload_and_ingest(&env, &q, key, bytes).await);
    }
    let (acme, globex) = (
        JobId::parse_qualified("acme/claims").unwrap(),
        JobId::parse_qualified("globex/claims").unwrap(),
    );
    assert_eq!(
        outcomes[..2],
        [
            IngestOutcome::Queued {
                job: acme.clone(),
                chunks: 2
            },
            IngestOutcome::Queued {
                job: globex.clone(),
                chunks: 1
            }
        ]
    );
    assert!(
        matches!(&outcomes[2], IngestOutcome::Ignored { reason, .. } if reason.contains("inbox/<tenant>/<job>.fheb")),
        "{:?}",
        outcomes[2]
    );
    drain(env.worker(), &q, 2).await;
    // Each tenant's results are its own batch's, under its own prefix.
    env.assert_exact(&acme, &acme_q).await;
    env.assert_exact(&globex, &globex_q).await;
    let keys = env.store.list("results/").await.unwrap();
    assert!(
        keys.iter()
            .all(|k| k.starts_with("results/acme/claims/")
                || k.starts_with("results/globex/claims/")),
        "{keys:?}"
    );
    assert!(
        env.store
            .size("jobs/acme/claims/manifest.json")
            .await
            .unwrap()
            .is_some()
    );

    // Status answers each tenant for its own jobs only.
    let (code, list) = status(&env, tenant("acme"), "/jobs").await;
    assert_eq!(
        (code, list["jobs"].clone()),
        (200, serde_json::json!(["acme/claims"]))
    );
    let (code, st) = status(&env, tenant("acme"), "/jobs/claims").await;
    assert_eq!(code, 200);
    assert_eq!(
        (st["job"].as_str(), st["state"].as_str()),
        (Some("acme/claims"), Some("SUCCEEDED"))
    );
    assert_eq!(st["records"], 2100);
    let (code, st) = status(&env, tenant("globex"), "/jobs/globex/claims").await;
    assert_eq!((code, st["records"].clone()), (200, serde_json::json!(300)));
    // Another tenant's job reads exactly as a job that does not exist.
    let (code, other) = status(&env, tenant("globex"), "/jobs/acme/claims").await;
    let (code2, missing) = status(&env, tenant("globex"), "/jobs/nope").await;
    assert_eq!((code, code2), (404, 404));
    assert_eq!(other["error"], "no job named acme/claims");
    assert_eq!(missing["error"], "no job named nope");
    let (code, _) = status(&env, tenant("initech"), "/jobs/claims").await;
    assert_eq!(code, 404);
    let (code, list) = status(&env, tenant("initech"), "/jobs").await;
    assert_eq!((code, list["jobs"].clone()), (200, serde_json::json!([])));
    // A caller that is no tenant is refused with the reason.
    let (code, why) = status(&env, Err("not a tenant".into()), "/jobs").await;
    assert_eq!((code, why["error"].as_str()), (403, Some("not a tenant")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_evaluation_key_is_read_from_its_own_prefix() {
    let env = Env::new().await;
    let t = crate::trees::tree();
    publish(&env.store, &t.pkg).await;
    let id = crate::trees::key_id();
    let q = queue(Duration::from_secs(60));
    let batch = || {
        crate::trees::batch(ChunkLayout {
            records_per_chunk: 16,
            eval_key: Some(id),
            encryption: fhe_batch_core::params::Encryption::SecretKey,
        })
    };
    // The key published for the single-tenant layout (keys/<id>/) does not serve a tenant.
    env.store
        .put(&layout::eval_key(&id), t.key_bytes.clone())
        .await
        .unwrap();
    let out = upload_and_ingest(&env, &q, "inbox/acme/trees.fheb", batch()).await;
    let want = format!("keys/acme/{id}/eval.key");
    assert!(
        matches!(&out[0], IngestOutcome::Rejected { reason, .. } if reason.contains(&want)),
        "{out:?}"
    );
    // Published under the tenant's prefix (`publish-key --tenant acme`), the job runs.
    env.store.put(&want, t.key_bytes.clone()).await.unwrap();
    let out = upload_and_ingest(&env, &q, "inbox/acme/trees2.fheb", batch()).await;
    let job = JobId::parse_qualified("acme/trees2").unwrap();
    assert!(
        matches!(&out[0], IngestOutcome::Queued { job: j, .. } if *j == job),
        "{out:?}"
    );
    // Remove the single-tenant copy: the worker must read the tenant's.
    std::fs::remove_file(env.store.path_of(&layout::eval_key(&id)).unwrap()).unwrap();
    let worker = Arc::new(Worker::new(
        env.store.clone(),
        FheEvaluator::new(None),
        WorkerConfig { max_receives: 5 },
    ));
    drain(worker, &q, 2).await;
    let st = env.status(&job).await;
    assert_eq!(st.state, JobState::Succeeded, "{st:?}");
}

#[test]
fn the_status_caller_is_a_tenant_by_its_role_or_user_name() {
    let p = "fhe-batch-tenant-";
    let ok = |arn: &str| tenant_of_caller(Some(arn), p).map(|t| t.to_string());
    assert_eq!(
        ok("arn:aws:sts::123456789012:assumed-role/fhe-batch-tenant-acme/alice").as_deref(),
        Ok("acme")
    );
    assert_eq!(
        ok("arn:aws-us-gov:iam::123456789012:user/teams/fhe-batch-tenant-globex").as_deref(),
        Ok("globex")
    );
    for bad in [
        "arn:aws:sts::123456789012:assumed-role/admin/alice",
        "arn:aws:sts::123456789012:assumed-role/fhe-batch-tenant-/x",
        "arn:aws:sts::123456789012:assumed-role/fhe-batch-tenant-a.b/x",
        "arn:aws:iam::123456789012:root",
        "arn:aws:sts::123456789012:federated-user/fhe-batch-tenant-acme",
        "garbage",
    ] {
        assert!(ok(bad).is_err(), "{bad}");
    }
    assert!(tenant_of_caller(None, p).is_err());
}
