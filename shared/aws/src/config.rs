//! Configuration of the functions, read once at cold start from the environment.

use crate::{EventBridgeNotifier, SnsNotifier};
use fhe_batch_core::format::BatchLimits;
use fhe_batch_core::layout::Tenancy;
use fhe_batch_core::pipeline::FanOut;
use fhe_batch_core::ports::Notifier;

/// Why the function cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    #[error("environment variable {name} is not a valid number: {value:?}")]
    Number { name: &'static str, value: String },
    #[error("environment variable FHE_BATCH_TENANCY must be single or multi, not {0:?}")]
    Tenancy(String),
}

/// What every function needs. Never holds secrets (credentials come from the SDK chain).
#[derive(Debug, Clone)]
pub struct Config {
    /// The bucket (`FHE_BATCH_BUCKET`).
    pub bucket: String,
    /// The job queue (`JOBS_QUEUE_URL`); only ingest needs it.
    pub queue_url: Option<String>,
    /// The queue's dead-letter limit (`MAX_RECEIVES`, default 5).
    pub max_receives: u32,
    /// Batch limits (`MAX_BATCH_RECORDS`, `MAX_BATCH_BYTES`).
    pub limits: BatchLimits,
    /// One data owner or several tenants (`FHE_BATCH_TENANCY`: `single`, the default, or
    /// `multi`).
    pub tenancy: Tenancy,
    /// On a multi-tenant stack, the prefix of tenant role (or user) names:
    /// `<prefix><tenant>` (`FHE_BATCH_TENANT_ROLE_PREFIX`, default `fhe-batch-tenant-`).
    pub tenant_role_prefix: String,
}

fn number<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, ConfigError> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| ConfigError::Number { name, value: v }),
        Err(_) => Ok(default),
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults = BatchLimits::default();
        Ok(Self {
            bucket: std::env::var("FHE_BATCH_BUCKET")
                .map_err(|_| ConfigError::Missing("FHE_BATCH_BUCKET"))?,
            queue_url: std::env::var("JOBS_QUEUE_URL").ok(),
            max_receives: number("MAX_RECEIVES", 5)?,
            limits: BatchLimits {
                max_records: number("MAX_BATCH_RECORDS", defaults.max_records)?,
                max_batch_bytes: number("MAX_BATCH_BYTES", defaults.max_batch_bytes)?,
                ..defaults
            },
            tenancy: {
                let raw = std::env::var("FHE_BATCH_TENANCY").unwrap_or_default();
                Tenancy::parse(&raw).ok_or(ConfigError::Tenancy(raw))?
            },
            tenant_role_prefix: std::env::var("FHE_BATCH_TENANT_ROLE_PREFIX")
                .ok()
                .filter(|p| !p.trim().is_empty())
                .unwrap_or_else(|| "fhe-batch-tenant-".into()),
        })
    }

    pub fn queue_url(&self) -> Result<&str, ConfigError> {
        self.queue_url
            .as_deref()
            .ok_or(ConfigError::Missing("JOBS_QUEUE_URL"))
    }
}

/// Builds the S3 and SQS clients from the standard AWS configuration chain (so
/// `AWS_ENDPOINT_URL` points both at a local endpoint). `FHE_BATCH_ENDPOINT_URL`, when set and
/// not empty, does the same; the template declares it empty, so `sam local invoke --env-vars`
/// can set it (SAM only passes variables the template declares). `S3_FORCE_PATH_STYLE=true`
/// selects path-style addressing, which local endpoints need.
///
/// The SDK's own retries are off: callers wrap the adapters in
/// [`fhe_batch_core::retry::Retrying`], one bounded retry layer whose behaviour under injected
/// faults is tested (two layers would multiply the attempts).
pub async fn clients() -> (aws_sdk_s3::Client, aws_sdk_sqs::Client) {
    let c = all_clients().await;
    (c.s3, c.sqs)
}

/// The SDK clients the functions use, from one configuration.
#[derive(Clone, Debug)]
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    /// Job-end notifications to the success and error topics.
    pub sns: aws_sdk_sns::Client,
    /// Job-end events on an event bus.
    pub events: aws_sdk_eventbridge::Client,
}

impl Clients {
    /// Where job ends are published, from the environment: the SNS topics
    /// (`FHE_BATCH_SUCCESS_TOPIC_ARN`, `FHE_BATCH_ERROR_TOPIC_ARN`) and the event bus
    /// (`FHE_BATCH_EVENT_BUS`), each channel once per job end; `None` when none is set.
    pub fn notifier_from_env(&self) -> Option<FanOut> {
        let mut channels: Vec<(&'static str, Box<dyn Notifier>)> = Vec::new();
        if let Some(n) = SnsNotifier::from_env(self.sns.clone()) {
            channels.push(("sns", Box::new(n)));
        }
        if let Some(n) = EventBridgeNotifier::from_env(self.events.clone()) {
            channels.push(("eventbridge", Box::new(n)));
        }
        (!channels.is_empty()).then(|| FanOut::new(channels))
    }
}

/// [`clients`], and the SNS and EventBridge clients for job-end notifications, from the same
/// configuration.
pub async fn all_clients() -> Clients {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1));
    if let Some(url) = std::env::var("FHE_BATCH_ENDPOINT_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        loader = loader.endpoint_url(url.trim());
    }
    let shared = loader.load().await;
    let path_style = std::env::var("S3_FORCE_PATH_STYLE").is_ok_and(|v| v == "true" || v == "1");
    let s3 = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(path_style)
        .build();
    Clients {
        s3: aws_sdk_s3::Client::from_conf(s3),
        sqs: aws_sdk_sqs::Client::new(&shared),
        sns: aws_sdk_sns::Client::new(&shared),
        events: aws_sdk_eventbridge::Client::new(&shared),
    }
}

/// JSON logs for CloudWatch, filtered by `RUST_LOG`. Never logs key or ciphertext bytes: the
/// pipeline logs ids, sizes and outcomes only.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .without_time()
        .init();
}
