//! Job-end events on Amazon EventBridge, beside the SNS topics: one `PutEvents` entry per job
//! end, from source [`SOURCE`] with detail type [`DETAIL_SUCCEEDED`] or [`DETAIL_FAILED`] and
//! the [`JobNotification`] as its detail, on the bus named by `FHE_BATCH_EVENT_BUS`. Rules match
//! on `source`, `detail-type` and any detail field (`detail.job`, `detail.state`, ...).

use fhe_batch_core::job::{JobNotification, JobState};
use fhe_batch_core::ports::{Notifier, NotifyError};
use std::future::Future;
use std::pin::Pin;

/// The events' `source`.
pub const SOURCE: &str = "fhe-batch";
/// `detail-type` of a job that SUCCEEDED.
pub const DETAIL_SUCCEEDED: &str = "fhe-batch Job Succeeded";
/// `detail-type` of a job that FAILED.
pub const DETAIL_FAILED: &str = "fhe-batch Job Failed";

/// Puts one event per job end on an event bus.
#[derive(Clone, Debug)]
pub struct EventBridgeNotifier {
    client: aws_sdk_eventbridge::Client,
    bus: String,
}

impl EventBridgeNotifier {
    /// `bus`: an event bus name or ARN (`default` is the account's default bus).
    pub fn new(client: aws_sdk_eventbridge::Client, bus: impl Into<String>) -> Self {
        Self {
            client,
            bus: bus.into(),
        }
    }

    /// From `FHE_BATCH_EVENT_BUS` (empty or unset: no events).
    pub fn from_env(client: aws_sdk_eventbridge::Client) -> Option<Self> {
        std::env::var("FHE_BATCH_EVENT_BUS")
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(|bus| Self::new(client, bus))
    }

    async fn send(&self, n: &JobNotification) -> Result<(), NotifyError> {
        let detail_type = match n.state {
            JobState::Succeeded => DETAIL_SUCCEEDED,
            _ => DETAIL_FAILED,
        };
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(SOURCE)
            .detail_type(detail_type)
            .detail(serde_json::to_string(n).expect("notification serializes"))
            .build();
        let out = self
            .client
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|e| {
                NotifyError(aws_sdk_eventbridge::error::DisplayErrorContext(&e).to_string())
            })?;
        // PutEvents answers 200 with per-entry failures: one failed entry is a failed publish.
        if out.failed_entry_count() > 0 {
            let why = out
                .entries()
                .iter()
                .find_map(|e| {
                    e.error_code()
                        .map(|c| format!("{c}: {}", e.error_message().unwrap_or("")))
                })
                .unwrap_or_else(|| "entry failed".into());
            return Err(NotifyError(format!(
                "EventBridge refused the event ({why})"
            )));
        }
        Ok(())
    }
}

impl Notifier for EventBridgeNotifier {
    fn publish<'a>(
        &'a self,
        notification: &'a JobNotification,
    ) -> Pin<Box<dyn Future<Output = Result<(), NotifyError>> + Send + 'a>> {
        Box::pin(self.send(notification))
    }
}
