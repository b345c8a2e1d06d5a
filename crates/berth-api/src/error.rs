use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use berth_oci::ErrorCode;
use berth_oci::OciError;
use berth_registry::RegistryError;
use serde_json::json;

/// An error on its way to the client, in the spec's format:
/// `{"errors":[{"code":…,"message":…,"detail":…}]}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub detail: serde_json::Value,
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
            headers: Vec::new(),
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }
}

impl From<OciError> for ApiError {
    fn from(e: OciError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let code = e.code();
        let mut err = ApiError::new(code, e.to_string());
        if let RegistryError::RangeNotSatisfiable { size } = &e {
            err = err.with_header(header::CONTENT_RANGE, &format!("bytes */{size}"));
        }
        match code {
            // Unavailability passes: the client may try again in a moment.
            ErrorCode::Unavailable => err = err.with_header(header::RETRY_AFTER, "1"),
            ErrorCode::Internal => tracing::error!(error = %e, "internal error"),
            _ => {}
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "errors": [{
                "code": self.code.as_str(),
                "message": self.message,
                "detail": self.detail,
            }]
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.headers_mut().extend(self.headers);
        resp
    }
}

pub type ApiResult<T = Response> = Result<T, ApiError>;
