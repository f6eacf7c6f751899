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
//! Attempt 1 (every job without an attempt record) keeps the keys above, so jobs, messages and
//! records written before attempts existed read as they did; a later attempt starts with no
//! failures and its own end notification because its records live under `attempt-<n>/`.

use crate::ids::{JobId, ModelId};

pub const INBOX_PREFIX: &str = "inbox/";
pub const BATCH_SUFFIX: &str = ".fheb";
pub const RESULT_SUFFIX: &str = ".fher";

/// Why an object key is not an inbox batch key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("object {key:?} is not a batch upload: batches go to inbox/<job>.fheb")]
    NotABatch { key: String },
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
    Ok(JobId::from_file_name(upload_name(key)?))
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

    proptest! {
        #[test]
        fn every_key_stays_under_its_prefix(s in "\\PC{0,70}", chunk in any::<u32>()) {
            if let Ok(job) = JobId::parse(&s) {
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
