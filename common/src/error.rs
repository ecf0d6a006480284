//! The one error type of the stores and the one place that maps causes to gRPC codes.
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// What a store or service can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad request fields; each violation names its field.
    #[error("invalid argument: {0:?}")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("not found: {0}")]
    NotFound(String),
    /// A precondition (version) no longer holds.
    #[error("aborted: {0}")]
    Aborted(String),
    /// The request cannot be served in the state things are in; `subject` names what
    /// (a `google.rpc.PreconditionFailure` violation of `kind`).
    #[error("failed precondition: {subject}: {description}")]
    FailedPrecondition { kind: &'static str, subject: String, description: String },
    /// A configured limit would be exceeded.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// A dependency (other than a Redis command) is unreachable.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis answered unexpectedly: {0}")]
    Protocol(String),
    #[error("configuration: {0}")]
    Config(String),
}

impl From<redis::ParsingError> for Error {
    fn from(e: redis::ParsingError) -> Self {
        Error::Protocol(e.to_string())
    }
}

impl Error {
    /// One bad field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument(violations) => {
                let summary =
                    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
                Status::with_error_details(Code::InvalidArgument, summary, ErrorDetails::with_bad_request(violations))
            }
            Error::NotFound(m) => Status::not_found(m),
            Error::FailedPrecondition { kind, subject, description } => {
                let message = format!("{subject}: {description}");
                let details = ErrorDetails::with_precondition_failure(vec![tonic_types::PreconditionViolation::new(
                    kind,
                    subject,
                    description,
                )]);
                Status::with_error_details(Code::FailedPrecondition, message, details)
            }
            Error::Aborted(m) => Status::aborted(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::Unavailable(m) => Status::unavailable(m),
            // Redis error text never reaches a client: it is logged here, where it is mapped.
            Error::Redis(e) => {
                let code = redis_code(&e);
                tracing::warn!(error = %e, ?code, "redis command failed");
                let message = if is_oom(&e) { "storage is full; retry later" } else { redis_message(code) };
                Status::new(code, message)
            }
            Error::Protocol(m) | Error::Config(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// A Redis that does not answer in time is UNAVAILABLE, like one that is down: the
/// caller should retry (elsewhere), which DEADLINE_EXCEEDED ("your deadline was too
/// short") would not tell it.
/// A Redis out of memory (`maxmemory` with `noeviction`) refuses writes: the caller
/// retries later, as for any storage outage; nothing was written.
fn redis_code(e: &redis::RedisError) -> Code {
    if is_oom(e)
        || e.is_timeout()
        || e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || failing_over(e)
    {
        Code::Unavailable
    } else {
        Code::Internal
    }
}

/// Errors of a failover or a slot move in progress: a demoted master (READONLY), a
/// cluster without a master for a slot (CLUSTERDOWN), a slot migrating (TRYAGAIN), a
/// replica without its master (MASTERDOWN), a server loading its data (LOADING).
fn failing_over(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("READONLY" | "CLUSTERDOWN" | "TRYAGAIN" | "MASTERDOWN" | "LOADING" | "MOVED" | "ASK"))
}

fn is_oom(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM") || e.to_string().contains("OOM command not allowed")
}

fn redis_message(code: Code) -> &'static str {
    match code {
        Code::Unavailable => "storage unavailable or not answering; retry",
        _ => "internal error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_bad_request_details() {
        let s: Status = Error::invalid("user_id", "must not be empty").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("user_id"));
        let details = s.get_error_details();
        let br = details.bad_request().expect("bad request details");
        assert_eq!(br.field_violations[0].field, "user_id");
    }

    #[test]
    fn unreachable_redis_is_unavailable_without_its_error_text() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "secret detail");
        let s: Status = Error::Redis(redis::RedisError::from(io)).into();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("secret"));
    }

    #[test]
    fn a_redis_that_does_not_answer_is_unavailable() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        let s: Status = Error::Redis(redis::RedisError::from(io)).into();
        assert_eq!(s.code(), Code::Unavailable);
    }
}
