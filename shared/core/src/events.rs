//! The parts of Lambda events the pipeline reads, taken from untrusted JSON without a schema
//! library: S3 notifications name the uploaded objects. (SQS bodies are
//! [`crate::job::ChunkMessage`]s.)

use serde_json::Value;

/// Largest S3 object key, in bytes (S3's own limit).
pub const MAX_S3_KEY_BYTES: usize = 1024;

/// What an S3 notification asks of the ingest function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Notification {
    /// The `s3:TestEvent` S3 sends when notifications are configured.
    Test,
    /// Decoded keys of objects created in our bucket, in event order.
    Objects {
        keys: Vec<String>,
        /// Records skipped: another bucket, a missing field, an undecodable key.
        skipped: Vec<String>,
    },
    /// Not an S3 notification at all.
    NotS3(String),
}

/// Reads an S3 notification: every record's bucket name and URL-encoded key (`+` for space).
pub fn s3_notification(event: &Value, bucket: &str) -> S3Notification {
    if event.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return S3Notification::Test;
    }
    let Some(records) = event.get("Records").and_then(Value::as_array) else {
        return S3Notification::NotS3("no Records array".into());
    };
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let s3 = record.get("s3");
        let name = s3
            .and_then(|s| s.get("bucket"))
            .and_then(|b| b.get("name"))
            .and_then(Value::as_str);
        let raw = s3
            .and_then(|s| s.get("object"))
            .and_then(|o| o.get("key"))
            .and_then(Value::as_str);
        match (name, raw) {
            (Some(name), Some(_)) if name != bucket => {
                skipped.push(format!("record {i}: event for another bucket"));
            }
            (Some(_), Some(raw)) => match decode_s3_key(raw) {
                Some(key) if !key.is_empty() && key.len() <= MAX_S3_KEY_BYTES => keys.push(key),
                _ => skipped.push(format!("record {i}: undecodable or oversized object key")),
            },
            _ => skipped.push(format!("record {i}: no bucket name or object key")),
        }
    }
    S3Notification::Objects { keys, skipped }
}

/// Decodes an S3 event object key (URL-encoded, `+` for space); `None` for a bad escape or
/// bytes that are not UTF-8.
pub fn decode_s3_key(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(records: Vec<(&str, &str)>) -> Value {
        json!({"Records": records.into_iter().map(|(b, k)| json!({
            "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": b}, "object": {"key": k, "size": 1}}
        })).collect::<Vec<_>>()})
    }

    #[test]
    fn reads_keys_of_our_bucket_only() {
        let e = event(vec![
            ("b", "inbox/claims+2026%2D11.fheb"),
            ("other", "inbox/x.fheb"),
            ("b", "inbox/bad%zz.fheb"),
            ("b", "inbox/y.fheb"),
        ]);
        let S3Notification::Objects { keys, skipped } = s3_notification(&e, "b") else {
            panic!()
        };
        assert_eq!(keys, ["inbox/claims 2026-11.fheb", "inbox/y.fheb"]);
        assert_eq!(skipped.len(), 2);
        assert_eq!(
            s3_notification(&json!({"Event": "s3:TestEvent"}), "b"),
            S3Notification::Test
        );
        assert!(matches!(
            s3_notification(&json!({"Records": 3}), "b"),
            S3Notification::NotS3(_)
        ));
        assert!(matches!(
            s3_notification(&json!({"Records": [{"s3": 1}]}), "b"),
            S3Notification::Objects { keys, skipped } if keys.is_empty() && skipped.len() == 1
        ));
    }

    #[test]
    fn decoding() {
        assert_eq!(decode_s3_key("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(decode_s3_key("%"), None);
        assert_eq!(decode_s3_key("%+1"), None);
        assert_eq!(decode_s3_key("%ff"), None, "not UTF-8");
        assert_eq!(decode_s3_key("%C3%A9").as_deref(), Some("é"));
    }
}
