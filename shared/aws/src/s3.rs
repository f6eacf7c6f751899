//! [`ObjectStore`] on Amazon S3.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use fhe_batch_core::ports::{ObjectStore, PutOutcome, StoreError};

/// One bucket of S3 (or any S3-compatible endpoint) as the object store.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Store {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

/// HTTP status of a failed request, when a response came back.
pub(crate) fn status_of<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Whether a failed S3 or SQS call may succeed when repeated: throttling, 5xx, timeouts and
/// connection trouble may; other 4xx answers (a bad receipt, a missing queue) may not.
pub(crate) fn is_retryable<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        _ => {
            matches!(status_of(err), Some(408 | 409 | 429 | 500..=599))
                || matches!(
                    err.code(),
                    Some(
                        "SlowDown"
                            | "Throttling"
                            | "ThrottlingException"
                            | "RequestThrottled"
                            | "RequestTimeout"
                    )
                )
        }
    }
}

/// Maps an SDK error to a [`StoreError`], keeping "not found" apart and saying whether a retry
/// may help (throttling, 5xx, timeouts and connection trouble may; other 4xx may not).
fn map_err<E>(key: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = status_of(&err);
    let code = err.code().map(str::to_string);
    if status == Some(404) || matches!(code.as_deref(), Some("NoSuchKey" | "NotFound")) {
        return StoreError::NotFound {
            key: key.to_string(),
        };
    }
    let retryable = is_retryable(&err);
    StoreError::Backend {
        key: key.to_string(),
        message: aws_sdk_s3::error::DisplayErrorContext(&err).to_string(),
        retryable,
    }
}

/// Reads a response body to the end; a broken stream is worth a retry.
async fn collect(key: &str, body: ByteStream) -> Result<Vec<u8>, StoreError> {
    collect_at_most(key, body, u64::MAX).await
}

/// Reads a body, stopping with `TooLarge` as soon as it passes `max_bytes`, whatever its
/// declared length said.
async fn collect_at_most(
    key: &str,
    mut body: ByteStream,
    max_bytes: u64,
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    while let Some(part) = body.try_next().await.map_err(|e| StoreError::Backend {
        key: key.to_string(),
        message: format!("reading the body: {e}"),
        retryable: true,
    })? {
        if (out.len() + part.len()) as u64 > max_bytes {
            return Err(StoreError::TooLarge {
                key: key.to_string(),
                size: (out.len() + part.len()) as u64,
                limit: max_bytes,
            });
        }
        out.extend_from_slice(&part);
    }
    Ok(out)
}

/// The object size S3 declared; an answer without one is an error, never a size of 0.
fn declared_size(key: &str, length: Option<i64>) -> Result<u64, StoreError> {
    match length {
        Some(n) if n >= 0 => Ok(n as u64),
        _ => Err(StoreError::Backend {
            key: key.to_string(),
            message: "S3 answered without a content length".into(),
            retryable: false,
        }),
    }
}

impl ObjectStore for S3Store {
    async fn get(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        let size = declared_size(key, out.content_length())?;
        if size > max_bytes {
            return Err(StoreError::TooLarge {
                key: key.to_string(),
                size,
                limit: max_bytes,
            });
        }
        let bytes = collect_at_most(key, out.body, max_bytes).await?;
        if bytes.len() as u64 > max_bytes {
            return Err(StoreError::TooLarge {
                key: key.to_string(),
                size: bytes.len() as u64,
                limit: max_bytes,
            });
        }
        Ok(bytes)
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={start}-{}", start + len - 1))
            .send()
            .await
            .map_err(|e| match map_err(key, e) {
                StoreError::Backend { message, .. } if message.contains("InvalidRange") => {
                    StoreError::Range {
                        key: key.to_string(),
                        start,
                        len,
                        size: 0,
                    }
                }
                other => other,
            })?;
        let bytes = collect(key, out.body).await?;
        if bytes.len() as u64 != len {
            return Err(StoreError::Range {
                key: key.to_string(),
                start,
                len,
                size: start + bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(declared_size(key, out.content_length())?)),
            Err(e) => match map_err(key, e) {
                StoreError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        match self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_none_match("*")
            .body(ByteStream::from(bytes))
            .send()
            .await
        {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) => {
                let code = e.code().map(str::to_string);
                let status = status_of(&e);
                if status == Some(412) || code.as_deref() == Some("PreconditionFailed") {
                    Ok(PutOutcome::AlreadyExists)
                } else {
                    Err(map_err(key, e))
                }
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_err(prefix, e))?;
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_content_length_is_an_error_not_zero() {
        assert_eq!(declared_size("k", Some(12)).unwrap(), 12);
        assert!(matches!(
            declared_size("k", None),
            Err(StoreError::Backend {
                retryable: false,
                ..
            })
        ));
        assert!(declared_size("k", Some(-1)).is_err());
    }

    #[tokio::test]
    async fn a_body_longer_than_allowed_stops_being_read() {
        let body = ByteStream::from(vec![7u8; 100]);
        assert!(matches!(
            collect_at_most("k", body, 99).await,
            Err(StoreError::TooLarge { .. })
        ));
        let body = ByteStream::from(vec![7u8; 100]);
        assert_eq!(collect_at_most("k", body, 100).await.unwrap().len(), 100);
    }
}
