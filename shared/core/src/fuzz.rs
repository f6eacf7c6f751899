//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz), kept here so the same code also
//! runs as ordinary tests over the committed hostile corpus. Each takes arbitrary bytes, must
//! return without panicking, and asserts the reader's invariants: what parses re-encodes to an
//! equivalent value, and no key built from untrusted input leaves its prefix.

use crate::events::{S3Notification, s3_notification};
use crate::format::{BatchHeader, BatchLimits, FormatError, ResultHeader, verify_chunk};
use crate::ids::JobId;
use crate::job::ChunkMessage;
use crate::layout;
use crate::model::{ClientModel, ModelManifest, ServerModel};

/// Limits small enough that no input makes a fuzzer allocate much.
pub fn fuzz_limits() -> BatchLimits {
    BatchLimits {
        max_records: 1 << 24,
        max_features: 256,
        max_chunks: 4096,
        max_batch_bytes: 1 << 40,
    }
}

/// Everything ingest and the workers check of a whole batch file: the header, the object
/// size, and every chunk's checksum. A valid batch passes; anything else is a typed error.
pub fn validate_batch(bytes: &[u8], limits: &BatchLimits) -> Result<BatchHeader, FormatError> {
    let hlen = BatchHeader::header_len_from_prefix(bytes, limits)?;
    let header_bytes = bytes.get(..hlen as usize).ok_or(FormatError::Truncated {
        what: "batch header",
        needed: hlen,
        got: bytes.len() as u64,
    })?;
    let header = BatchHeader::parse(header_bytes, limits)?;
    header.check_object_size(bytes.len() as u64)?;
    for c in &header.chunks {
        // check_object_size guarantees every range is inside the object.
        let payload = &bytes[c.offset as usize..(c.offset + c.length) as usize];
        verify_chunk(payload, c.length, &c.sha256)?;
    }
    Ok(header)
}

/// Batch header and whole-batch reader.
pub fn batch(data: &[u8]) {
    let limits = fuzz_limits();
    let _ = BatchHeader::header_len_from_prefix(data, &limits);
    if let Ok(h) = BatchHeader::parse(data, &limits) {
        let encoded = h.encode();
        assert_eq!(BatchHeader::parse(&encoded, &limits).as_ref(), Ok(&h));
        assert_eq!(encoded.len() as u64, h.header_len());
    }
    if let Ok(h) = validate_batch(data, &limits) {
        assert_eq!(h.total_len(), data.len() as u64);
    }
}

/// Chunk payload check against its table entry (the first 32 bytes are the claimed SHA-256).
pub fn chunk(data: &[u8]) {
    if data.len() < 32 {
        return;
    }
    let (sha, payload) = data.split_at(32);
    let sha: [u8; 32] = sha.try_into().expect("32 bytes");
    let _ = verify_chunk(payload, payload.len() as u64, &sha);
    assert!(verify_chunk(payload, payload.len() as u64 + 1, &sha).is_err());
}

/// Result file reader (`.fher`).
pub fn result(data: &[u8]) {
    if let Ok((h, body)) = ResultHeader::decode(data, 256) {
        assert_eq!(body.len(), h.body_len());
        assert_eq!(h.encode(body), data, "a result file re-encodes to itself");
    }
}

/// Model files: manifest (JSON), server part (bincode), client part (JSON).
pub fn model(data: &[u8]) {
    let _ = ModelManifest::from_bytes(data);
    if let Ok(s) = ServerModel::from_bytes(data) {
        assert!(s.validate().is_ok());
        assert_eq!(ServerModel::from_bytes(&s.to_bytes()).as_ref(), Ok(&s));
        let x = vec![0u64; s.input_columns() as usize];
        assert_eq!(s.eval_plain(&x).len(), s.result_values() as usize);
    }
    if let Ok(c) = ClientModel::from_json(data) {
        let record = vec![0.5f64; c.n_features()];
        assert_eq!(c.columns(&record).len(), c.input_columns());
    }
}

/// S3 notifications as the ingest function reads them.
pub fn s3_event(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let S3Notification::Objects { keys, .. } = s3_notification(&v, "bucket") {
        for key in keys {
            if let Ok(job) = layout::job_of_inbox_key(&key) {
                assert_eq!(layout::inbox(&job), key);
                keys_stay_in_prefix(&job);
            }
            if let Ok((job, _)) = layout::job_for_upload(&key) {
                keys_stay_in_prefix(&job);
            }
        }
    }
}

/// SQS chunk message bodies as the worker reads them.
pub fn sqs_body(data: &[u8]) {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = ChunkMessage::parse(body) {
        let _ = m.sha256_bytes();
        assert_eq!(ChunkMessage::parse(&m.to_body()).as_ref(), Ok(&m));
        keys_stay_in_prefix(&m.job);
    }
}

/// Job ids and the object keys built from them.
pub fn job_id(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(job) = JobId::parse(s) {
        keys_stay_in_prefix(&job);
        assert_eq!(
            layout::job_of_inbox_key(&layout::inbox(&job)).as_ref(),
            Ok(&job)
        );
    }
    let _ = layout::job_of_inbox_key(s);
}

/// Every key derived from a valid job id sits under its own prefix, one path segment deep,
/// with nothing a filesystem or S3 console would read as a parent reference.
pub fn keys_stay_in_prefix(job: &JobId) {
    let id = job.as_str();
    assert!(!id.is_empty() && !id.contains('/') && id != "." && id != "..");
    for (key, prefix) in [
        (layout::inbox(job), "inbox/"),
        (layout::job_manifest(job), "jobs/"),
        (layout::job_failure(job), "jobs/"),
        (layout::chunk_error(job, u32::MAX), "jobs/"),
        (layout::chunk_result(job, 0), "results/"),
    ] {
        assert!(key.starts_with(prefix), "{key}");
        assert!(
            key.split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != ".."),
            "{key}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_take_anything() {
        for data in [
            &b""[..],
            b"\0",
            b"FHEB",
            b"{}",
            b"{\"Records\":[{\"s3\":{\"bucket\":{\"name\":\"bucket\"},\"object\":{\"key\":\"inbox/a%2F..%2Fb.fheb\"}}}]}",
            &[0xff; 64],
        ] {
            batch(data);
            chunk(data);
            result(data);
            model(data);
            s3_event(data);
            sqs_body(data);
            job_id(data);
        }
    }
}
