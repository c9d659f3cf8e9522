//! The scheduled sync's configuration, read once at init from environment variables (the
//! template's `QuotaSyncFunction`). README "Quota sync" lists the same names; a test checks
//! that they agree.

use sfn_pacer::config::{default_quota_key, ConfigError, WorkflowType};

use crate::sync::{Share, DEFAULT_SHARE};

/// Every environment variable the sync reads.
pub const VARIABLES: &[&str] = &[
    "COORDINATION_TABLE",
    "QUOTA_KEY",
    "WORKFLOW_TYPE",
    "QUOTA_SHARE",
    "METRICS_NAMESPACE",
];

/// What the scheduled sync syncs.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// `COORDINATION_TABLE` (required): the table of the budget.
    pub table: String,
    /// `QUOTA_KEY`: the budget's key (default: the workflow type's, as the starter's).
    pub key: String,
    /// `WORKFLOW_TYPE` (`standard`, default, or `express`): whose StartExecution quota.
    pub workflow_type: WorkflowType,
    /// `QUOTA_SHARE` (default 0.9): the budget's fraction of the quota.
    pub share: Share,
    /// `METRICS_NAMESPACE` (default `SfnPacer`): of `QuotaRate` and `QuotaBurst`.
    pub metrics_namespace: String,
}

fn err(variable: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        reason: reason.into(),
    }
}

impl SyncConfig {
    /// Reads and validates the configuration from the process environment.
    pub fn from_env() -> Result<SyncConfig, ConfigError> {
        SyncConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads and validates the configuration through `lookup` (variable name → value); blank
    /// values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<SyncConfig, ConfigError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let table = get("COORDINATION_TABLE").ok_or_else(|| {
            err(
                "COORDINATION_TABLE",
                "is required (the table that holds the shared budget)",
            )
        })?;
        let workflow_type = match get("WORKFLOW_TYPE").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("standard") => WorkflowType::Standard,
            Some("express") => WorkflowType::Express,
            Some(other) => {
                return Err(err(
                    "WORKFLOW_TYPE",
                    format!("expected standard or express, got {other:?}"),
                ))
            }
        };
        let key = get("QUOTA_KEY").unwrap_or_else(|| default_quota_key(workflow_type).to_string());
        if key.chars().count() > 200 || key.chars().any(char::is_control) {
            return Err(err(
                "QUOTA_KEY",
                "must be at most 200 characters, without control characters",
            ));
        }
        let share = match get("QUOTA_SHARE") {
            None => DEFAULT_SHARE,
            Some(raw) => raw
                .parse::<f64>()
                .map_err(|_| err("QUOTA_SHARE", format!("expected a number, got {raw:?}")))?,
        };
        let share = Share::new(share).map_err(|reason| err("QUOTA_SHARE", reason))?;
        let metrics_namespace = get("METRICS_NAMESPACE").unwrap_or_else(|| "SfnPacer".to_string());
        if metrics_namespace.len() > 255 || metrics_namespace.starts_with("AWS/") {
            return Err(err(
                "METRICS_NAMESPACE",
                "must be at most 255 characters and not start with AWS/",
            ));
        }
        Ok(SyncConfig {
            table,
            key,
            workflow_type,
            share,
            metrics_namespace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<SyncConfig, ConfigError> {
        SyncConfig::from_lookup(|k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn defaults_follow_the_workflow_type() {
        let config = load(&[("COORDINATION_TABLE", "coord")]).unwrap();
        assert_eq!(config.key, "start-execution-standard");
        assert_eq!(config.workflow_type, WorkflowType::Standard);
        assert_eq!(config.share.get(), 0.9);
        assert_eq!(config.metrics_namespace, "SfnPacer");
        let express = load(&[("COORDINATION_TABLE", "coord"), ("WORKFLOW_TYPE", "EXPRESS")]).unwrap();
        assert_eq!(express.key, "start-execution-express");
        let keyed = load(&[
            ("COORDINATION_TABLE", "coord"),
            ("QUOTA_KEY", "team-a"),
            ("QUOTA_SHARE", "0.5"),
        ])
        .unwrap();
        assert_eq!((keyed.key.as_str(), keyed.share.get()), ("team-a", 0.5));
    }

    #[test]
    fn errors_name_the_variable_on_one_line() {
        for (pairs, variable) in [
            (&[][..], "COORDINATION_TABLE"),
            (&[("COORDINATION_TABLE", "t"), ("QUOTA_SHARE", "0")][..], "QUOTA_SHARE"),
            (
                &[("COORDINATION_TABLE", "t"), ("QUOTA_SHARE", "1.5")][..],
                "QUOTA_SHARE",
            ),
            (
                &[("COORDINATION_TABLE", "t"), ("QUOTA_SHARE", "most")][..],
                "QUOTA_SHARE",
            ),
            (
                &[("COORDINATION_TABLE", "t"), ("WORKFLOW_TYPE", "sync")][..],
                "WORKFLOW_TYPE",
            ),
            (&[("COORDINATION_TABLE", "t"), ("QUOTA_KEY", "a\nb")][..], "QUOTA_KEY"),
            (
                &[("COORDINATION_TABLE", "t"), ("METRICS_NAMESPACE", "AWS/States")][..],
                "METRICS_NAMESPACE",
            ),
        ] {
            let e = load(pairs).unwrap_err();
            assert_eq!(e.variable, variable, "{pairs:?}");
            let message = e.to_string();
            assert!(message.contains(variable) && !message.contains('\n'), "{message}");
        }
    }
}
