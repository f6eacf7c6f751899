//! Status: a job's state derived from the objects in the store (no database), and the list of
//! known jobs.

use super::{chunk_set, current_attempt, read_failure, read_manifest};
use crate::ids::{JobId, TenantId};
use crate::job::{JobManifest, JobState, JobStatus, MAX_RECORD_BYTES};
use crate::layout;
use crate::ports::{ObjectStore, StoreError};

/// Why a status request cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no job named {0}")]
    NotFound(JobId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Derives a job's state from the objects in the store (no database): its current attempt's
/// state, counts and failures (an earlier attempt's failures are history, not this attempt's).
pub async fn job_status<S: ObjectStore>(store: &S, job: &JobId) -> Result<JobStatus, StatusError> {
    let attempt = current_attempt(store, job).await?;
    let mut status = JobStatus {
        job: job.clone(),
        attempt,
        state: JobState::Queued,
        chunks_done: 0,
        chunks_total: 0,
        chunks_failed: 0,
        records: 0,
        model_id: None,
        created_unix_ms: None,
        failures: Vec::new(),
        results_prefix: layout::results_prefix(job),
        refused_uploads: Vec::new(),
    };
    let manifest = read_manifest(store, job).await?;
    let job_failure = read_failure(store, &layout::attempt_failure(job, attempt)).await?;
    let Some(manifest) = manifest else {
        if let Some(f) = job_failure {
            status.state = JobState::Failed;
            status.failures.push(f);
            return Ok(status);
        }
        // Uploaded but not yet ingested: learnt by listing, so the status function needs no
        // read access to the batches (ciphertext) themselves.
        let batch = layout::inbox(job);
        if store.list(&batch).await?.contains(&batch) {
            return Ok(status);
        }
        return Err(StatusError::NotFound(job.clone()));
    };
    count_chunks(store, job, attempt, &manifest, &mut status).await?;
    for key in store
        .list(&layout::job_refused_prefix(job))
        .await?
        .iter()
        .take(20)
    {
        if let Ok(b) = store.get(key, MAX_RECORD_BYTES).await
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
            && let Some(r) = v["reason"].as_str()
        {
            status.refused_uploads.push(r.to_string());
        }
    }
    if let Some(f) = job_failure {
        status.failures.insert(0, f);
    }
    status.state = if !status.failures.is_empty() || status.chunks_failed > 0 {
        JobState::Failed
    } else if status.chunks_done == status.chunks_total {
        JobState::Succeeded
    } else if status.chunks_done > 0 || store.size(&layout::job_started(job)).await?.is_some() {
        JobState::Running
    } else {
        JobState::Queued
    };
    Ok(status)
}

/// Fills in what the manifest says, the chunks done, and the chunks of this attempt failed
/// (with the records of the first 20 of them).
async fn count_chunks<S: ObjectStore>(
    store: &S,
    job: &JobId,
    attempt: u32,
    manifest: &JobManifest,
    status: &mut JobStatus,
) -> Result<(), StoreError> {
    status.chunks_total = manifest.chunk_count;
    status.records = manifest.record_count;
    status.model_id = Some(manifest.model_id);
    status.created_unix_ms = Some(manifest.created_unix_ms);
    let done = chunk_set(store, &layout::results_prefix(job)).await?;
    status.chunks_done = done.keys().filter(|&&c| c < manifest.chunk_count).count() as u32;
    let errors = chunk_set(store, &layout::attempt_errors_prefix(job, attempt)).await?;
    let mut failed: Vec<(u32, String)> = errors
        .into_iter()
        .filter(|(c, _)| !done.contains_key(c))
        .collect();
    failed.sort();
    status.chunks_failed = failed.len() as u32;
    for (_, key) in failed.iter().take(20) {
        status.failures.extend(read_failure(store, key).await?);
    }
    Ok(())
}

/// Every job known to the store (those with a manifest or a job-level failure) on a
/// single-tenant stack.
pub async fn list_jobs<S: ObjectStore>(store: &S) -> Result<Vec<JobId>, StoreError> {
    list_tenant_jobs(store, None).await
}

/// A tenant's jobs (`jobs/<tenant>/`), or, without a tenant, the single-tenant stack's.
pub async fn list_tenant_jobs<S: ObjectStore>(
    store: &S,
    tenant: Option<&TenantId>,
) -> Result<Vec<JobId>, StoreError> {
    let prefix = layout::tenant_jobs_prefix(tenant);
    let mut jobs: Vec<JobId> = store
        .list(&prefix)
        .await?
        .iter()
        .filter_map(|k| {
            let rest = k.strip_prefix(&prefix)?;
            let (job, file) = rest.split_once('/')?;
            let job = JobId::parse(job).ok()?;
            (file == "manifest.json" || file == "failed.json").then(|| match tenant {
                Some(t) => JobId::for_tenant(t, &job),
                None => job,
            })
        })
        .collect();
    jobs.sort();
    jobs.dedup();
    Ok(jobs)
}
