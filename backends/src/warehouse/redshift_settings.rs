//! Where and how to reach Redshift through the Data API: the settings, read and checked in every
//! build (a build without the `aws` feature still refuses bad settings by name before saying it
//! cannot load into Redshift).

use serde::{Deserialize, Serialize};

/// Where and how to reach Redshift through the Data API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedshiftSettings {
    /// A provisioned cluster…
    #[serde(default)]
    pub cluster_identifier: Option<String>,
    /// …or a serverless workgroup (exactly one of the two).
    #[serde(default)]
    pub workgroup_name: Option<String>,
    pub database: String,
    /// Temporary credentials for this database user (clusters only)…
    #[serde(default)]
    pub db_user: Option<String>,
    /// …or a Secrets Manager secret holding user name and password.
    #[serde(default)]
    pub secret_arn: Option<String>,
    /// The role Redshift assumes to read the Parquet and manifests from S3 in `COPY`.
    pub iam_role: String,
    /// First and longest pause between two `DescribeStatement` polls.
    #[serde(default = "default_poll_initial_ms")]
    pub poll_initial_ms: u64,
    #[serde(default = "default_poll_max_ms")]
    pub poll_max_ms: u64,
    /// A statement still running after this long is cancelled and the load fails.
    #[serde(default = "default_statement_timeout_secs")]
    pub statement_timeout_secs: u64,
}

fn default_poll_initial_ms() -> u64 {
    250
}
fn default_poll_max_ms() -> u64 {
    5_000
}
fn default_statement_timeout_secs() -> u64 {
    1_800
}

impl RedshiftSettings {
    /// Refuses settings that cannot work, naming the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        match (&self.cluster_identifier, &self.workgroup_name) {
            (Some(_), Some(_)) => {
                return Err("redshift: set cluster_identifier or workgroup_name, not both".into());
            }
            (None, None) => {
                return Err("redshift: cluster_identifier or workgroup_name is required".into());
            }
            (Some(_), None) if self.db_user.is_none() && self.secret_arn.is_none() => {
                return Err(
                    "redshift: a cluster needs db_user (temporary credentials) or secret_arn"
                        .into(),
                );
            }
            (None, Some(_)) if self.db_user.is_some() => {
                return Err(
                    "redshift: db_user is for clusters; a workgroup uses the IAM identity or secret_arn"
                        .into(),
                );
            }
            _ => {}
        }
        if self.database.is_empty() {
            return Err("redshift.database is empty".into());
        }
        if !self.iam_role.starts_with("arn:") {
            return Err(format!(
                "redshift.iam_role {:?} is not an IAM role ARN",
                self.iam_role
            ));
        }
        if self.poll_initial_ms == 0 || self.poll_max_ms < self.poll_initial_ms {
            return Err("redshift: need 0 < poll_initial_ms <= poll_max_ms".into());
        }
        Ok(())
    }
}
