//! Failures, each with the HTTP code and the `Status` reason the real API
//! server gives for it, so that a client's error handling (kube's
//! `Error::Api(status)` with `status.code` and `status.reason`) is
//! exercised as against the real one.

use serde_json::{Value, json};

use super::resources::Resource;

/// A refused request. The text is the `Status` message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    /// A resourceVersion or continue token older than the kept history.
    #[error("{0}")]
    Expired(String),
    #[error("{0}")]
    RequestEntityTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    ServiceUnavailable(String),
    /// Also what a resourceVersion newer than the store gets, as from the
    /// real one once it gives up waiting for it.
    #[error("{0}")]
    Timeout(String),
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::AlreadyExists(_) | ApiError::Conflict(_) => 409,
            ApiError::Expired(_) => 410,
            ApiError::RequestEntityTooLarge(_) => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::ServiceUnavailable(_) => 503,
            ApiError::Timeout(_) => 504,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::NotFound(_) => "NotFound",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::AlreadyExists(_) => "AlreadyExists",
            ApiError::Conflict(_) => "Conflict",
            ApiError::Expired(_) => "Expired",
            ApiError::RequestEntityTooLarge(_) => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::ServiceUnavailable(_) => "ServiceUnavailable",
            ApiError::Timeout(_) => "Timeout",
        }
    }

    /// The `Status` object the API answers with.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        })
    }

    pub(crate) fn not_found(resource: &Resource, name: &str) -> Self {
        ApiError::NotFound(format!("{} \"{name}\" not found", resource.qualified()))
    }

    pub(crate) fn no_such_kind(api_version: &str, kind: &str) -> Self {
        ApiError::NotFound(format!(
            "no matches for kind \"{kind}\" in version \"{api_version}\""
        ))
    }

    pub(crate) fn modified(resource: &Resource, name: &str) -> Self {
        ApiError::Conflict(format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            resource.qualified()
        ))
    }

    pub(crate) fn too_old(asked: u64, oldest: u64) -> Self {
        ApiError::Expired(format!("too old resource version: {asked} ({oldest})"))
    }

    pub(crate) fn too_new() -> Self {
        ApiError::Timeout("Too large resource version".to_owned())
    }
}
