//! API errors and their one mapping to gRPC statuses with `google.rpc` details.
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::jobs::AttachError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input: one violation per bad field.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("job {0} not found (finished jobs are kept for the job TTL)")]
    JobNotFound(String),
    /// Over capacity: retry after the given delay.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after: Duration,
    },
    /// Starting up or shutting down.
    #[error("server is {0}; retry on another replica or shortly")]
    Unavailable(&'static str),
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let message = error.to_string();
        match error {
            ApiError::InvalidArgument(violations) => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request(violations),
            ),
            ApiError::JobNotFound(_) => Status::not_found(message),
            ApiError::Overloaded { retry_after, .. } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            ApiError::Unavailable(_) => Status::with_error_details(
                Code::Unavailable,
                message,
                ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
            ),
            ApiError::Internal(_) => Status::internal(message),
        }
    }
}

impl From<AttachError> for ApiError {
    fn from(error: AttachError) -> Self {
        match error {
            AttachError::KeyReused(_) => ApiError::InvalidArgument(vec![FieldViolation::new(
                "idempotency_key",
                error.to_string(),
            )]),
            AttachError::Draining => ApiError::Unavailable("shutting down"),
            AttachError::QueueFull { .. } => ApiError::Overloaded {
                message: error.to_string(),
                retry_after: Duration::from_secs(2),
            },
            AttachError::Full(_) => ApiError::Overloaded {
                message: error.to_string(),
                retry_after: Duration::from_secs(5),
            },
            AttachError::Quota { retry_after } => ApiError::Overloaded {
                message: error.to_string(),
                retry_after,
            },
        }
    }
}
