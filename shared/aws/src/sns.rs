//! Job-end notifications on SNS: a success topic and an error topic, as SageMaker Asynchronous
//! Inference has. The message is the [`JobNotification`] as JSON; the subject names the job and
//! its state, and a `state` message attribute lets subscribers filter.

use aws_sdk_sns::types::MessageAttributeValue;
use fhe_batch_core::job::{JobNotification, JobState};
use fhe_batch_core::ports::{Notifier, NotifyError};
use std::future::Future;
use std::pin::Pin;

/// Publishes to `success_topic` when a job SUCCEEDED, else to `error_topic`; a topic left
/// `None` gets nothing.
#[derive(Clone, Debug)]
pub struct SnsNotifier {
    client: aws_sdk_sns::Client,
    success_topic: Option<String>,
    error_topic: Option<String>,
}

impl SnsNotifier {
    pub fn new(
        client: aws_sdk_sns::Client,
        success_topic: Option<String>,
        error_topic: Option<String>,
    ) -> Self {
        Self {
            client,
            success_topic,
            error_topic,
        }
    }

    /// From `FHE_BATCH_SUCCESS_TOPIC_ARN` and `FHE_BATCH_ERROR_TOPIC_ARN` (empty or unset: no
    /// topic); `None` when neither is set.
    pub fn from_env(client: aws_sdk_sns::Client) -> Option<Self> {
        let read = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let (ok, err) = (
            read("FHE_BATCH_SUCCESS_TOPIC_ARN"),
            read("FHE_BATCH_ERROR_TOPIC_ARN"),
        );
        (ok.is_some() || err.is_some()).then(|| Self::new(client, ok, err))
    }

    async fn send(&self, n: &JobNotification) -> Result<(), NotifyError> {
        let topic = match n.state {
            JobState::Succeeded => &self.success_topic,
            _ => &self.error_topic,
        };
        let Some(topic) = topic else {
            return Ok(());
        };
        let attribute = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(n.state.to_string())
            .build()
            .map_err(|e| NotifyError(e.to_string()))?;
        self.client
            .publish()
            .topic_arn(topic)
            .subject(format!("fhe-batch job {} {}", n.job, n.state))
            .message(serde_json::to_string(n).expect("notification serializes"))
            .message_attributes("state", attribute)
            .send()
            .await
            .map_err(|e| NotifyError(aws_sdk_sns::error::DisplayErrorContext(&e).to_string()))?;
        Ok(())
    }
}

impl Notifier for SnsNotifier {
    fn publish<'a>(
        &'a self,
        notification: &'a JobNotification,
    ) -> Pin<Box<dyn Future<Output = Result<(), NotifyError>> + Send + 'a>> {
        Box::pin(self.send(notification))
    }
}
