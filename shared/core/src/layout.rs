//! The one place where object keys are built. Every key in the bucket comes from here.
//!
//! ```text
//! inbox/<job>.fheb                  uploaded batch (the only prefix that triggers ingest)
//! models/<model_id>/manifest.json   published model: manifest, server part, client part
//! models/<model_id>/server.bin
//! models/<model_id>/client.json
//! jobs/<job>/manifest.json          written once by ingest
//! jobs/<job>/failed.json            job-level failure (the batch was rejected)
//! jobs/<job>/started                first worker has picked the job up
//! jobs/<job>/errors/<chunk>.json    permanent failure of one chunk
//! results/<job>/<chunk>.fher        chunk results, created once
//! ```

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
pub fn job_failure(job: &JobId) -> String {
    format!("jobs/{job}/failed.json")
}
pub fn job_started(job: &JobId) -> String {
    format!("jobs/{job}/started")
}
/// `jobs/<job>/notify-claim`: created once by whoever publishes the job's end notification.
pub fn job_notify_claim(job: &JobId) -> String {
    format!("jobs/{job}/notify-claim")
}
/// `jobs/<job>/notified.json`: the notification, written once it was published.
pub fn job_notified(job: &JobId) -> String {
    format!("jobs/{job}/notified.json")
}
/// `jobs/<job>/refused/`: uploads under this job's name that were not run (a different batch
/// while the job existed), one record each.
pub fn job_refused_prefix(job: &JobId) -> String {
    format!("jobs/{job}/refused/")
}
pub fn job_errors_prefix(job: &JobId) -> String {
    format!("jobs/{job}/errors/")
}
pub fn chunk_error(job: &JobId, chunk: u32) -> String {
    format!("jobs/{job}/errors/{chunk:06}.json")
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

    proptest! {
        #[test]
        fn every_key_stays_under_its_prefix(s in "\\PC{0,70}", chunk in any::<u32>()) {
            if let Ok(job) = JobId::parse(&s) {
                for key in [inbox(&job), job_manifest(&job), job_failure(&job), chunk_error(&job, chunk), chunk_result(&job, chunk)] {
                    prop_assert!(!key.split('/').any(|c| c == ".." || c == "." || c.is_empty()));
                    prop_assert!(!key.starts_with('/'));
                }
                prop_assert!(chunk_result(&job, chunk).starts_with(&results_prefix(&job)));
                prop_assert!(chunk_error(&job, chunk).starts_with(&job_errors_prefix(&job)));
            }
        }
    }
}
