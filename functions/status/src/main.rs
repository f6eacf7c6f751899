//! The `status` function behind a Function URL (`AWS_IAM` auth): `GET /jobs` and
//! `GET /jobs/{job}` as JSON. On a multi-tenant stack each caller sees its own tenant's jobs
//! (the tenant is read from the caller's signed IAM identity). Wiring only; the logic is
//! `fhe_batch_aws::handlers::handle_status_request_in`.

use fhe_batch_aws::S3Store;
use fhe_batch_aws::config::{Config, clients, init_tracing};
use fhe_batch_aws::handlers::{StatusScope, handle_status_request_in, tenant_of_caller};
use fhe_batch_core::layout::Tenancy;
use fhe_batch_core::retry::{RetryPolicy, Retrying};
use lambda_http::RequestExt;
use lambda_http::request::RequestContext;
use lambda_http::{Body, Error, Request, Response, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let config = Config::from_env()?;
    let (s3, _) = clients().await;
    let store = &Retrying::new(S3Store::new(s3, &config.bucket), RetryPolicy::default());
    let config = &config;
    lambda_http::run(service_fn(move |req: Request| async move {
        let scope = match config.tenancy {
            Tenancy::Single => Ok(StatusScope::Stack),
            Tenancy::Multi => {
                let arn = match req.request_context_ref() {
                    Some(RequestContext::ApiGatewayV2(ctx)) => ctx
                        .authorizer
                        .as_ref()
                        .and_then(|a| a.iam.as_ref())
                        .and_then(|iam| iam.user_arn.clone()),
                    _ => None,
                };
                tenant_of_caller(arn.as_deref(), &config.tenant_role_prefix)
                    .map(StatusScope::Tenant)
            }
        };
        let reply =
            handle_status_request_in(store, req.method().as_str(), req.uri().path(), scope).await;
        Response::builder()
            .status(reply.status)
            .header("content-type", "application/json")
            .body(Body::from(reply.body))
            .map_err(Error::from)
    }))
    .await
}
