//! Classification: the one place that decides what a StartExecution failure means.

use crate::start::StartError;

/// What a failed StartExecution attempt means for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The execution already exists: the message was started before. Acknowledge it.
    Duplicate,
    /// The quota is exhausted: slow down, then retry.
    Throttled,
    /// A passing failure (5xx, timeout, transport): retry.
    Retryable,
    /// A failure no message can fix (state machine missing or being deleted, access denied,
    /// open-execution limit): retry later, and say it once per invocation.
    Systemic,
    /// The message itself is bad (invalid name or input): it can never start.
    Permanent,
}

impl Class {
    /// Whether a later attempt may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Class::Throttled | Class::Retryable | Class::Systemic)
    }
}

/// Error codes that mean "throttled" (the quota's `ThrottlingException` and its relatives).
const THROTTLE_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ThrottledException",
    // KMS throttles the state machine's encryption key: a throttle too, to be paced, not a
    // reason to give up on the batch.
    "KmsThrottlingException",
];

/// Error codes no single message can fix.
const SYSTEMIC_CODES: &[&str] = &[
    "StateMachineDoesNotExist",
    "StateMachineDeleting",
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "InvalidArn",
    "ExecutionLimitExceeded",
    "KmsAccessDeniedException",
    "KmsInvalidStateException",
];

/// Error codes that mean the message's own request is invalid.
const PERMANENT_CODES: &[&str] = &["InvalidExecutionInput", "InvalidName"];

/// What an operator should do about a systemic failure, by its error code.
pub fn systemic_advice(error: &StartError) -> &'static str {
    let code = match error {
        StartError::Service { code, .. } => code.as_str(),
        _ => "",
    };
    match code {
        "ExecutionLimitExceeded" => {
            "the account's limit of open executions is reached: wait for running executions to finish, \
             stop stuck ones, or ask AWS for a higher limit"
        }
        "StateMachineDoesNotExist" | "StateMachineDeleting" | "InvalidArn" => {
            "check STATE_MACHINE_ARN: the state machine does not exist (or is being deleted)"
        }
        "KmsAccessDeniedException" | "KmsInvalidStateException" => {
            "check the state machine's KMS key: the key policy must let the function's role use it, and the key must be enabled"
        }
        _ => "check the function's permissions (states:StartExecution on the state machine) and its credentials",
    }
}

/// Classifies a failed attempt. Unknown errors are retryable: the queue's redrive bounds
/// how often, so an unknown error never loses a message.
pub fn classify(error: &StartError) -> Class {
    match error {
        StartError::Service { code, status, .. } => {
            let code = code.as_str();
            if code == "ExecutionAlreadyExists" {
                Class::Duplicate
            } else if THROTTLE_CODES.contains(&code) || *status == Some(429) {
                Class::Throttled
            } else if SYSTEMIC_CODES.contains(&code) {
                Class::Systemic
            } else if PERMANENT_CODES.contains(&code) {
                Class::Permanent
            } else {
                Class::Retryable
            }
        }
        StartError::Timeout | StartError::Transport(_) | StartError::NotSent(_) => Class::Retryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str, status: u16) -> StartError {
        StartError::Service {
            code: code.into(),
            message: "m".into(),
            status: Some(status),
        }
    }

    #[test]
    fn codes_are_classified() {
        assert_eq!(classify(&service("ExecutionAlreadyExists", 400)), Class::Duplicate);
        assert_eq!(classify(&service("ThrottlingException", 400)), Class::Throttled);
        assert_eq!(classify(&service("", 429)), Class::Throttled);
        assert_eq!(classify(&service("StateMachineDoesNotExist", 400)), Class::Systemic);
        assert_eq!(classify(&service("StateMachineDeleting", 400)), Class::Systemic);
        assert_eq!(classify(&service("AccessDeniedException", 400)), Class::Systemic);
        assert_eq!(classify(&service("InvalidExecutionInput", 400)), Class::Permanent);
        assert_eq!(classify(&service("InvalidName", 400)), Class::Permanent);
        assert_eq!(classify(&service("", 500)), Class::Retryable);
        assert_eq!(classify(&service("ServiceUnavailable", 503)), Class::Retryable);
        assert_eq!(
            classify(&service("SomethingNew", 400)),
            Class::Retryable,
            "unknown is retryable"
        );
        assert_eq!(classify(&StartError::Timeout), Class::Retryable);
        assert_eq!(classify(&StartError::Transport("reset".into())), Class::Retryable);
    }

    #[test]
    fn kms_throttling_is_a_throttle_and_advice_fits_the_cause() {
        assert_eq!(classify(&service("KmsThrottlingException", 400)), Class::Throttled);
        assert_eq!(classify(&service("KmsAccessDeniedException", 400)), Class::Systemic);
        let limit = systemic_advice(&service("ExecutionLimitExceeded", 400));
        assert!(
            limit.contains("open executions") && !limit.contains("permissions"),
            "{limit}"
        );
        assert!(systemic_advice(&service("StateMachineDoesNotExist", 400)).contains("STATE_MACHINE_ARN"));
        assert!(systemic_advice(&service("AccessDeniedException", 400)).contains("permissions"));
    }

    #[test]
    fn only_duplicates_and_permanent_failures_stop_retrying() {
        assert!(!Class::Duplicate.is_retryable());
        assert!(!Class::Permanent.is_retryable());
        assert!(Class::Throttled.is_retryable() && Class::Retryable.is_retryable() && Class::Systemic.is_retryable());
    }
}
