//! What the AWS backends share: how SDK clients are configured, and ONE place that turns an SDK
//! error into a [`BackendError`] that says whether a retry can help.
//!
//! Credentials and region come from the standard AWS chain (environment, profile, web identity
//! for IRSA on EKS, ECS task role, instance metadata). An endpoint URL can be set for local
//! AWS-compatible servers (moto in the tests) or VPC endpoints.

use serde::{Deserialize, Serialize};

/// The SDK side (clients, error classification): only in builds with the `aws` feature.
#[cfg(feature = "aws")]
mod sdk;
#[cfg(feature = "aws")]
pub use sdk::{classify, error_code, http_status};

/// Connection settings of the AWS clients. Every field has an environment variable (see the
/// README, "Running on AWS").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// AWS region; default: the standard chain (`AWS_REGION`, profile).
    #[serde(default)]
    pub region: Option<String>,
    /// One endpoint URL for every service (a local test server, a proxy); default: AWS.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Attempts per call, including the first (the SDK's standard retry mode with backoff and
    /// jitter, which also backs off on throttling). Default 5.
    #[serde(default)]
    pub max_attempts: Option<u32>,
}
