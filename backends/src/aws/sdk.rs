//! The AWS SDK's configuration of our clients, and ONE place that turns an SDK error into a
//! [`BackendError`] that says whether a retry can help.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::AwsSettings;
use crate::BackendError;

impl AwsSettings {
    /// Loads the shared SDK configuration.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(self.max_attempts.unwrap_or(5)))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let Some(r) = &self.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(e) = &self.endpoint_url {
            loader = loader.endpoint_url(e.clone());
        }
        loader.load().await
    }
}

/// Error codes that mean "slow down" or "try again later".
const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "SlowDown",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "RequestTimeout",
    "RequestTimeoutException",
    "ActiveStatementsExceededException",
    "ActiveSessionsExceededException",
    "KMS.ThrottlingException",
];

/// Turns an SDK error into a [`BackendError::Aws`]: `what` names the resource (queue URL,
/// `s3://bucket/key`). Throttling, 5xx answers, timeouts and unreachable endpoints are
/// retryable; everything else (access denied, no such queue or bucket, bad request) is not, and
/// the message says what to check.
pub fn classify<E>(service: &str, op: &str, what: &str, err: SdkError<E>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let (retryable, detail) = match &err {
        SdkError::TimeoutError(_) => (true, "timed out".to_string()),
        SdkError::DispatchFailure(d) => (
            true,
            if d.is_timeout() {
                "connection timed out".to_string()
            } else {
                format!("cannot reach the endpoint ({})", DisplayErrorContext(&err))
            },
        ),
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("Unknown").to_string();
            let msg = s.err().message().unwrap_or("").to_string();
            let retry =
                RETRYABLE_CODES.contains(&code.as_str()) || status.is_some_and(|s| s >= 500);
            let hint = match code.as_str() {
                "AccessDenied" | "AccessDeniedException" | "AccessDenied.Exception" => {
                    " (check the IAM policy of this process; see iam/ in the repository)"
                }
                "InvalidClientTokenId"
                | "SignatureDoesNotMatch"
                | "UnrecognizedClientException"
                | "ExpiredToken"
                | "ExpiredTokenException" => " (the AWS credentials are wrong or expired)",
                "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => {
                    " (the queue does not exist: create it, or fix the queue URL)"
                }
                "NoSuchBucket" => " (the bucket does not exist: create it, or fix the bucket name)",
                _ => "",
            };
            (
                retry,
                format!(
                    "{code}{}{}{hint}",
                    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default(),
                    if msg.is_empty() {
                        String::new()
                    } else {
                        format!(": {msg}")
                    }
                ),
            )
        }
        SdkError::ResponseError(_) => (
            status.is_none_or(|s| s >= 500),
            format!("unreadable response: {}", DisplayErrorContext(&err)),
        ),
        _ => (false, DisplayErrorContext(&err).to_string()),
    };
    BackendError::Aws {
        service: service.to_string(),
        op: op.to_string(),
        what: what.to_string(),
        detail,
        retryable,
        status,
    }
}

/// The code of a service error (`NoSuchKey`, `PreconditionFailed`), if the error is one.
pub fn error_code<E: ProvideErrorMetadata>(err: &SdkError<E>) -> Option<String> {
    match err {
        SdkError::ServiceError(s) => s.err().code().map(str::to_string),
        _ => None,
    }
}

/// The HTTP status of the answer, if there was one.
pub fn http_status<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}
