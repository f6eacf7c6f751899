//! The `status` function behind a Function URL (`AWS_IAM` auth): `GET /jobs` and
//! `GET /jobs/{job}` as JSON. Wiring only; the logic is
//! `fhe_batch_aws::handlers::handle_status_request`.

use fhe_batch_aws::S3Store;
use fhe_batch_aws::config::{Config, clients, init_tracing};
use fhe_batch_aws::handlers::handle_status_request;
use fhe_batch_core::retry::{RetryPolicy, Retrying};
use lambda_http::{Body, Error, Request, Response, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let config = Config::from_env()?;
    let (s3, _) = clients().await;
    let store = &Retrying::new(S3Store::new(s3, &config.bucket), RetryPolicy::default());
    lambda_http::run(service_fn(move |req: Request| async move {
        let reply = handle_status_request(store, req.method().as_str(), req.uri().path()).await;
        Response::builder()
            .status(reply.status)
            .header("content-type", "application/json")
            .body(Body::from(reply.body))
            .map_err(Error::from)
    }))
    .await
}
