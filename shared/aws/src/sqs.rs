//! [`JobQueue`] on Amazon SQS. Messages carry S3 pointers only (the chunk's byte range and hash),
//! never ciphertext.

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{MessageSystemAttributeName, SendMessageBatchRequestEntry};
use fhe_batch_core::job::check_message_sizes;
use fhe_batch_core::ports::{Delivery, JobQueue, QueueError};
use std::time::Duration;

/// An SQS queue.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A failed SQS call, retryable or not by the same rule as S3's.
fn backend<E>(e: SdkError<E, HttpResponse>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    QueueError::Backend {
        retryable: crate::s3::is_retryable(&e),
        message: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
    }
}

impl JobQueue for SqsQueue {
    /// Sends in batches of 10 (SQS's limit); entries SQS reports as failed are sent again, up
    /// to 5 attempts, with a growing pause.
    async fn send_batch(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        check_message_sizes(&bodies)?;
        for group in bodies.chunks(10) {
            let mut pending: Vec<(String, &String)> = group
                .iter()
                .enumerate()
                .map(|(i, b)| (format!("m{i}"), b))
                .collect();
            for attempt in 0..5u32 {
                let entries = pending
                    .iter()
                    .map(|(id, body)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(id)
                            .message_body(*body)
                            .build()
                            .map_err(|e| QueueError::Backend {
                                message: e.to_string(),
                                retryable: false,
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(backend)?;
                let failed: Vec<&str> = out.failed().iter().map(|f| f.id()).collect();
                pending.retain(|(id, _)| failed.contains(&id.as_str()));
                if pending.is_empty() {
                    break;
                }
                if attempt == 4 {
                    // Entry-level retries are spent; repeating the whole call would resend the
                    // groups already sent. Ingest's trigger retries the event instead.
                    return Err(QueueError::Backend {
                        message: format!("{} messages could not be sent", pending.len()),
                        retryable: false,
                    });
                }
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(backend)?;
        Ok(out
            .messages()
            .iter()
            .map(|m| Delivery {
                message_id: m.message_id().unwrap_or_default().to_string(),
                receipt: m.receipt_handle().unwrap_or_default().to_string(),
                body: m.body().unwrap_or_default().to_string(),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
            })
            .collect())
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// SQS allows at most 12 hours; longer timeouts are capped.
    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(timeout.as_secs().min(43_200) as i32)
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }
}
