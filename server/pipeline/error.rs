//! Why a job failed, and the gRPC code that says it.
use super::*;

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum PipelineError {
    #[error("{agent}: {source}")]
    Agent {
        agent: &'static str,
        source: AgentError,
    },
    #[error("token budget of {budget} exceeded: {used} tokens used")]
    Budget { budget: u64, used: u64 },
}

impl PipelineError {
    pub(super) fn code(&self) -> Code {
        match self {
            Self::Agent { source, .. } => match source {
                AgentError::NoSources(_) => Code::FailedPrecondition,
                AgentError::Kb(crate::kb::KbError::Upstream(_)) => Code::Unavailable,
                AgentError::Kb(_) | AgentError::Internal(_) => Code::Internal,
                // The model answered, unusably: retrying later will not help by itself.
                AgentError::InvalidAnswer { .. } => Code::FailedPrecondition,
                AgentError::Unavailable { .. } => Code::Unavailable,
            },
            Self::Budget { .. } => Code::ResourceExhausted,
        }
    }
}
