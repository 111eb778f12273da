//! The HTTP error type: every API error is `{"error":{"code","message"}}` with the status
//! that [`ErrorCode::http_status`] assigns.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::protocol::ErrorCode;

/// An HTTP API error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// Protocol error code (decides the status).
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// The methods the path serves, for the `Allow` header of a 405.
    allow: Option<&'static str>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            allow: None,
        }
    }

    /// 405 for a path that serves only `allow` (e.g. `"GET, POST"`).
    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("this path answers {allow} only"),
            )
        }
    }
}

/// A resource whose other methods get 405 with `Allow: <allow>` and the JSON error body
/// (without it, actix-web would hand them to the scope's 404). `allow` must list the
/// methods of the routes added to it; `tests/http_api.rs` checks every documented path.
pub fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    actix_web::web::resource(path).default_service(actix_web::web::to(move || async move {
        Err::<actix_web::HttpResponse, _>(ApiError::method_not_allowed(allow))
    }))
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if self.code == ErrorCode::RateLimited {
            // The API's limits refill every second.
            response.insert_header((actix_web::http::header::RETRY_AFTER, "1"));
        }
        if let Some(allow) = self.allow {
            response.insert_header((actix_web::http::header::ALLOW, allow));
        }
        response.json(json!({ "error": { "code": self.code, "message": self.message } }))
    }
}

impl ApiError {
    /// Maps a JSON body error: too large → 413, anything else → 400 naming the problem.
    pub fn from_json_error(err: actix_web::error::JsonPayloadError) -> ApiError {
        use actix_web::error::JsonPayloadError as E;
        match err {
            E::Overflow { limit } | E::OverflowKnownLength { limit, .. } => ApiError::new(
                ErrorCode::TooLarge,
                format!("request body larger than {limit} bytes"),
            ),
            E::ContentType => ApiError::new(
                ErrorCode::BadRequest,
                "Content-Type must be application/json",
            ),
            E::Payload(err) if super::body::is_timeout(&err) => {
                ApiError::new(ErrorCode::RequestTimeout, err.to_string())
            }
            other => ApiError::new(ErrorCode::BadRequest, format!("invalid JSON body: {other}")),
        }
    }
}

impl From<actix_web::Error> for ApiError {
    fn from(err: actix_web::Error) -> Self {
        ApiError::new(ErrorCode::BadRequest, err.to_string())
    }
}

impl From<crate::actors::registry::JoinError> for ApiError {
    fn from(err: crate::actors::registry::JoinError) -> Self {
        ApiError::new(err.code(), err.to_string())
    }
}

impl From<crate::RoomError> for ApiError {
    fn from(err: crate::RoomError) -> Self {
        ApiError::new(err.code, err.message)
    }
}

impl From<crate::webhooks::WebhookError> for ApiError {
    fn from(err: crate::webhooks::WebhookError) -> Self {
        use crate::webhooks::WebhookError as E;
        let code = match &err {
            E::Invalid(_) | E::Refused(_) => ErrorCode::BadRequest,
            E::NotFound(_) => ErrorCode::NotFound,
            E::Conflict(_) => ErrorCode::Conflict,
            E::Outbox(_) | E::Unavailable(_) => ErrorCode::Internal,
            E::NotShared(_) => ErrorCode::Unavailable,
        };
        ApiError::new(code, err.to_string())
    }
}
