//! The one place where object keys are built. Every key in the bucket comes from here.
//!
//! ```text
//! inbox/<job>.fheb                  uploaded batch (the only prefix that triggers ingest)
//! models/<model_id>/manifest.json   published model: manifest, server part, client part
//! models/<model_id>/server.bin
//! models/<model_id>/client.json
//! jobs/<job>/manifest.json          written once by ingest (the one batch that ran)
//! jobs/<job>/failed.json            job-level failure (the batch was rejected)
//! jobs/<job>/started                first worker has picked the job up
//! jobs/<job>/errors/<chunk>.json    permanent failure of one chunk
//! jobs/<job>/notify-claim           who publishes the job's end; notified.json once published
//! jobs/<job>/refused/<hash>.json    an upload under the job's name that was not run
//! jobs/<job>/attempts/<n>.json      attempt n >= 2 (a retry, or a corrected upload), once
//! jobs/<job>/attempt-<n>/...        attempt n's failed.json, errors/, notify-claim, notified.json
//! results/<job>/<chunk>.fher        chunk results, created once
//! ```
//!
//! On a stack that serves several tenants ([`Tenancy::Multi`]) every job is `<tenant>/<name>`,
//! so the keys above become `inbox/<tenant>/<name>.fheb`, `jobs/<tenant>/<name>/...` and
//! `results/<tenant>/<name>/...`, and evaluation keys live under `keys/<tenant>/<id>/eval.key`
//! (`keys/<id>/eval.key` on a single-tenant stack). Models stay shared under `models/`. A stack
//! is one or the other, so a tenant's prefix never meets a single-tenant job's.
//!
//! Attempt 1 (every job without an attempt record) keeps the keys above, so jobs, messages and
//! records written before attempts existed read as they did; a later attempt starts with no
//! failures and its own end notification because its records live under `attempt-<n>/`.

use crate::ids::{JobId, ModelId, TenantId};

pub const INBOX_PREFIX: &str = "inbox/";
pub const BATCH_SUFFIX: &str = ".fheb";
pub const RESULT_SUFFIX: &str = ".fher";

/// Why an object key is not an inbox batch key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("object {key:?} is not a batch upload: batches go to inbox/<job>.fheb")]
    NotABatch { key: String },
    #[error(
        "object {key:?} names no tenant: this stack serves several tenants, so batches go to inbox/<tenant>/<job>.fheb"
    )]
    NoTenant { key: String },
    #[error("object {key:?} does not name a valid job: {source}")]
    BadJob {
        key: String,
        #[source]
        source: crate::ids::IdError,
    },
}

/// `inbox/<job>.fheb`
pub fn inbox(job: &JobId) -> String {
    format!("{INBOX_PREFIX}{job}{BATCH_SUFFIX}")
}

/// The job an uploaded object runs as (key already URL-decoded), and whether its file name had
/// to be renamed ([`JobId::from_file_name`]): every `inbox/*.fheb` upload becomes a job.
pub fn job_for_upload(key: &str) -> Result<(JobId, bool), KeyError> {
    job_for_upload_in(key, Tenancy::Single)
}

/// Whether a stack serves one data owner (today's keys) or several tenants, each under its own
/// prefixes (`FHE_BATCH_TENANCY=multi`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tenancy {
    #[default]
    Single,
    Multi,
}

impl Tenancy {
    /// From `single` or `multi` (the template's `Tenancy` parameter).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "" | "single" => Some(Self::Single),
            "multi" => Some(Self::Multi),
            _ => None,
        }
    }

    /// The tenancy a job belongs to (a tenant's job is multi-tenant).
    pub fn of_job(job: &JobId) -> Self {
        if job.tenant().is_some() {
            Self::Multi
        } else {
            Self::Single
        }
    }
}

/// [`job_for_upload`] on a stack of the given tenancy. Multi-tenant: the key must be
/// `inbox/<tenant>/<name>.fheb` with a valid tenant; the name follows the file-name rule.
pub fn job_for_upload_in(key: &str, tenancy: Tenancy) -> Result<(JobId, bool), KeyError> {
    let name = upload_name(key)?;
    match tenancy {
        Tenancy::Single => Ok(JobId::from_file_name(name)),
        Tenancy::Multi => {
            let bad = || KeyError::NoTenant {
                key: key.chars().take(200).collect(),
            };
            let (tenant, rest) = name.split_once('/').ok_or_else(bad)?;
            let tenant = TenantId::parse(tenant).map_err(|_| bad())?;
            let (job, renamed) = JobId::from_file_name(rest);
            Ok((JobId::for_tenant(&tenant, &job), renamed))
        }
    }
}

/// The file name of an `inbox/<name>.fheb` key, without prefix and suffix.
fn upload_name(key: &str) -> Result<&str, KeyError> {
    key.strip_prefix(INBOX_PREFIX)
        .and_then(|rest| rest.strip_suffix(BATCH_SUFFIX))
        .ok_or_else(|| KeyError::NotABatch {
            key: key.chars().take(200).collect(),
        })
}

/// Recovers the job id from an uploaded object's key (already URL-decoded), refusing names
/// that are not job ids as they are.
pub fn job_of_inbox_key(key: &str) -> Result<JobId, KeyError> {
    JobId::parse(upload_name(key)?).map_err(|source| KeyError::BadJob {
        key: key.chars().take(200).collect(),
        source,
    })
}

pub fn model_prefix(model: &ModelId) -> String {
    format!("models/{model}/")
}
pub fn model_manifest(model: &ModelId) -> String {
    format!("models/{model}/manifest.json")
}
pub fn model_server(model: &ModelId) -> String {
    format!("models/{model}/server.bin")
}
pub fn model_client(model: &ModelId) -> String {
    format!("models/{model}/client.json")
}
/// A client's evaluation key (bootstrapping and packing keys), uploaded once.
pub fn eval_key(id: &crate::ids::EvalKeyId) -> String {
    format!("keys/{id}/eval.key")
}

/// Where the evaluation key a job names lives: under its tenant's `keys/<tenant>/` on a
/// multi-tenant stack, else `keys/<id>/eval.key`.
pub fn eval_key_for(job: &JobId, id: &crate::ids::EvalKeyId) -> String {
    eval_key_of(job.tenant().as_ref(), id)
}

/// [`eval_key_for`] by tenant.
pub fn eval_key_of(tenant: Option<&TenantId>, id: &crate::ids::EvalKeyId) -> String {
    match tenant {
        Some(t) => format!("keys/{t}/{id}/eval.key"),
        None => eval_key(id),
    }
}
pub fn job_manifest(job: &JobId) -> String {
    format!("jobs/{job}/manifest.json")
}
/// Attempt 1's job-level failure (see [`attempt_failure`]).
pub fn job_failure(job: &JobId) -> String {
    attempt_failure(job, 1)
}
pub fn job_started(job: &JobId) -> String {
    format!("jobs/{job}/started")
}
/// `jobs/<job>/attempts/`: one record per attempt after the first.
pub fn attempts_prefix(job: &JobId) -> String {
    format!("jobs/{job}/attempts/")
}
/// `jobs/<job>/attempts/<n>.json`: attempt `n` (2, 3, ...), created once.
pub fn attempt_record(job: &JobId, attempt: u32) -> String {
    format!("jobs/{job}/attempts/{attempt}.json")
}
/// The attempt an attempt record's key names (`None` for any other key).
pub fn attempt_of_record(job: &JobId, key: &str) -> Option<u32> {
    let name = key
        .strip_prefix(&attempts_prefix(job))?
        .strip_suffix(".json")?;
    if name.is_empty() || name.len() > 10 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok().filter(|&n| n >= 2)
}
/// Where attempt `n`'s own records live: `jobs/<job>/` for attempt 1 (the keys jobs had before
/// attempts existed), `jobs/<job>/attempt-<n>/` after.
fn attempt_dir(job: &JobId, attempt: u32) -> String {
    if attempt <= 1 {
        format!("jobs/{job}/")
    } else {
        format!("jobs/{job}/attempt-{attempt}/")
    }
}
/// Attempt `n`'s job-level failure (its batch was rejected at ingest).
pub fn attempt_failure(job: &JobId, attempt: u32) -> String {
    format!("{}failed.json", attempt_dir(job, attempt))
}
/// Created once by whoever publishes attempt `n`'s end notification.
pub fn attempt_notify_claim(job: &JobId, attempt: u32) -> String {
    format!("{}notify-claim", attempt_dir(job, attempt))
}
/// Attempt `n`'s end notification, written once it was published.
pub fn attempt_notified(job: &JobId, attempt: u32) -> String {
    format!("{}notified.json", attempt_dir(job, attempt))
}
/// Attempt `n`'s chunk failure records.
pub fn attempt_errors_prefix(job: &JobId, attempt: u32) -> String {
    format!("{}errors/", attempt_dir(job, attempt))
}
/// Attempt `n`'s failure record of one chunk.
pub fn attempt_chunk_error(job: &JobId, attempt: u32, chunk: u32) -> String {
    format!("{}{chunk:06}.json", attempt_errors_prefix(job, attempt))
}
/// `jobs/<job>/notify-claim`: attempt 1's notification claim.
pub fn job_notify_claim(job: &JobId) -> String {
    attempt_notify_claim(job, 1)
}
/// `jobs/<job>/notified.json`: attempt 1's notification, written once it was published.
pub fn job_notified(job: &JobId) -> String {
    attempt_notified(job, 1)
}
/// `jobs/<job>/refused/`: uploads under this job's name that were not run (a different batch
/// while the job existed), one record each.
pub fn job_refused_prefix(job: &JobId) -> String {
    format!("jobs/{job}/refused/")
}
/// Attempt 1's chunk failure records.
pub fn job_errors_prefix(job: &JobId) -> String {
    attempt_errors_prefix(job, 1)
}
/// Attempt 1's failure record of one chunk.
pub fn chunk_error(job: &JobId, chunk: u32) -> String {
    attempt_chunk_error(job, 1, chunk)
}
pub fn jobs_prefix() -> &'static str {
    "jobs/"
}

/// Where a tenant's jobs are listed: `jobs/<tenant>/` (`jobs/` without a tenant).
pub fn tenant_jobs_prefix(tenant: Option<&TenantId>) -> String {
    match tenant {
        Some(t) => format!("jobs/{t}/"),
        None => "jobs/".into(),
    }
}
pub fn results_prefix(job: &JobId) -> String {
    format!("results/{job}/")
}
pub fn chunk_result(job: &JobId, chunk: u32) -> String {
    format!("results/{job}/{chunk:06}{RESULT_SUFFIX}")
}

/// Parses the chunk index out of a result or error object name (`000042.fher`, `000042.json`).
pub fn chunk_of_name(name: &str) -> Option<u32> {
    let stem = name.rsplit('/').next()?.split('.').next()?;
    if stem.len() < 6 || stem.len() > 10 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn inbox_round_trip() {
        let job = JobId::parse("claims-1").unwrap();
        assert_eq!(inbox(&job), "inbox/claims-1.fheb");
        assert_eq!(job_of_inbox_key(&inbox(&job)).unwrap(), job);
        assert!(job_of_inbox_key("inbox/x.csv").is_err());
        assert!(job_of_inbox_key("inbox/../x.fheb").is_err());
        assert!(job_of_inbox_key("inbox/a/b.fheb").is_err());
        assert!(job_of_inbox_key("results/a.fheb").is_err());
        assert_eq!(chunk_of_name(&chunk_result(&job, 42)), Some(42));
        assert_eq!(chunk_of_name("results/x/12.fher"), None);
    }

    /// Attempt 1 keeps the keys jobs had before attempts existed; later attempts get their own.
    #[test]
    fn attempt_keys() {
        let job = JobId::parse("claims").unwrap();
        assert_eq!(job_failure(&job), "jobs/claims/failed.json");
        assert_eq!(chunk_error(&job, 3), "jobs/claims/errors/000003.json");
        assert_eq!(job_notify_claim(&job), "jobs/claims/notify-claim");
        assert_eq!(job_notified(&job), "jobs/claims/notified.json");
        assert_eq!(
            attempt_chunk_error(&job, 2, 3),
            "jobs/claims/attempt-2/errors/000003.json"
        );
        assert_eq!(
            attempt_failure(&job, 3),
            "jobs/claims/attempt-3/failed.json"
        );
        assert_eq!(
            attempt_notified(&job, 2),
            "jobs/claims/attempt-2/notified.json"
        );
        assert!(!attempt_chunk_error(&job, 2, 3).starts_with(&job_errors_prefix(&job)));
        assert_eq!(attempt_record(&job, 2), "jobs/claims/attempts/2.json");
        assert_eq!(attempt_of_record(&job, &attempt_record(&job, 12)), Some(12));
        for other in [
            "jobs/claims/attempts/1.json",
            "jobs/claims/attempts/x.json",
            "jobs/claims/attempts/2.json.tmp",
            "jobs/other/attempts/2.json",
            "jobs/claims/attempt-2/failed.json",
        ] {
            assert_eq!(attempt_of_record(&job, other), None, "{other}");
        }
    }

    #[test]
    fn tenant_keys() {
        let t = Tenancy::Multi;
        let (job, renamed) = job_for_upload_in("inbox/acme/claims.fheb", t).unwrap();
        assert_eq!((job.as_str(), renamed), ("acme/claims", false));
        assert_eq!(inbox(&job), "inbox/acme/claims.fheb");
        assert_eq!(job_manifest(&job), "jobs/acme/claims/manifest.json");
        assert_eq!(chunk_result(&job, 1), "results/acme/claims/000001.fher");
        let id = crate::ids::EvalKeyId::from_bytes([0xab; 16]);
        assert_eq!(eval_key_for(&job, &id), format!("keys/acme/{id}/eval.key"));
        let (dotted, renamed) = job_for_upload_in("inbox/acme/claims.v2.fheb", t).unwrap();
        assert_eq!((dotted.as_str(), renamed), ("acme/claims-v2", true));
        let (deep, _) = job_for_upload_in("inbox/acme/2026/claims.fheb", t).unwrap();
        assert_eq!(deep.as_str(), "acme/2026-claims");
        for key in ["inbox/claims.fheb", "inbox/ac.me/x.fheb", "inbox//x.fheb"] {
            assert!(
                matches!(job_for_upload_in(key, t), Err(KeyError::NoTenant { .. })),
                "{key}"
            );
        }
        // A single-tenant stack keeps today's rule.
        let (flat, _) = job_for_upload_in("inbox/acme/claims.fheb", Tenancy::Single).unwrap();
        assert_eq!(flat.as_str(), "acme-claims");
        assert_eq!(eval_key_for(&flat, &id), format!("keys/{id}/eval.key"));
        assert_eq!(Tenancy::parse("multi"), Some(Tenancy::Multi));
        assert_eq!(Tenancy::parse(""), Some(Tenancy::Single));
        assert_eq!(Tenancy::parse("many"), None);
    }

    proptest! {
        #[test]
        fn every_key_stays_under_its_prefix(s in "\\PC{0,70}|[a-z]{1,3}/[a-z./]{0,6}", chunk in any::<u32>()) {
            if let Ok(job) = JobId::parse_qualified(&s) {
                if let Some(t) = job.tenant() {
                    prop_assert!(job_manifest(&job).starts_with(&tenant_jobs_prefix(Some(&t))));
                    let tenant_inbox = format!("{INBOX_PREFIX}{t}/");
                    prop_assert!(inbox(&job).starts_with(&tenant_inbox));
                }
                let attempt = chunk.max(2);
                for key in [inbox(&job), job_manifest(&job), job_failure(&job), chunk_error(&job, chunk), chunk_result(&job, chunk), attempt_record(&job, attempt), attempt_chunk_error(&job, attempt, chunk), attempt_notify_claim(&job, attempt)] {
                    prop_assert!(!key.split('/').any(|c| c == ".." || c == "." || c.is_empty()));
                    prop_assert!(!key.starts_with('/'));
                }
                prop_assert!(chunk_result(&job, chunk).starts_with(&results_prefix(&job)));
                prop_assert!(chunk_error(&job, chunk).starts_with(&job_errors_prefix(&job)));
                prop_assert_eq!(attempt_of_record(&job, &attempt_record(&job, attempt)), Some(attempt));
            }
        }
    }
}
