//! The control plane's HTTP API: the wake API, the contract between the
//! proxy and the control plane (neon_local's control-plane service), and
//! the spec API compute_ctl starts from.
//!
//! `GET /v1/computes/{compute_id}/spec` answers the compute spec (JSON, see
//! `compute_api`) of that compute; 404 when the control plane has no such
//! compute. compute_ctl sends the W3C `traceparent` header of its start.
//!
//! `POST /v1/wake_compute` with `{"endpoint": name}`, `{"branch": name}`
//! or `{}` (the default branch; an empty body means the same) answers,
//! once the compute accepts connections, `{"endpoint": name, "address":
//! "host:port"}`. The control plane creates and starts an endpoint for a
//! branch that has none, and lets concurrent wakes of one endpoint wait for
//! a single start. Errors come as [`ErrorBody`]: 404 for an unknown name,
//! 400 for a bad request, other codes for a failed start.

use serde::{Deserialize, Serialize};

/// Where the wake API is served.
pub const WAKE_COMPUTE_PATH: &str = "/v1/wake_compute";

/// Where a compute's spec is served (axum's path syntax).
pub const COMPUTE_SPEC_ROUTE: &str = "/v1/computes/{compute_id}/spec";

/// The spec URL of compute `compute_id` under `base` (`http://host:port`,
/// with or without a trailing slash).
pub fn compute_spec_url(base: &str, compute_id: &str) -> String {
    format!(
        "{}/v1/computes/{compute_id}/spec",
        base.trim_end_matches('/')
    )
}

/// Which compute to wake: an endpoint by name, a branch's endpoint, or
/// (neither) the default branch's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WakeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

/// A running compute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeResponse {
    pub endpoint: String,
    /// `host:port` of the compute's PostgreSQL.
    pub address: String,
}

/// The body of an error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_url_matches_the_route() {
        assert_eq!(
            compute_spec_url("http://127.0.0.1:1234/", "ep1"),
            "http://127.0.0.1:1234/v1/computes/ep1/spec"
        );
        assert_eq!(
            COMPUTE_SPEC_ROUTE.replace("{compute_id}", "ep1"),
            "/v1/computes/ep1/spec"
        );
    }

    #[test]
    fn wire_shapes() {
        let branch = WakeRequest {
            branch: Some("dev".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&branch).unwrap(),
            r#"{"branch":"dev"}"#
        );
        assert_eq!(
            serde_json::to_string(&WakeRequest::default()).unwrap(),
            "{}"
        );
        let parsed: WakeRequest = serde_json::from_str(r#"{"endpoint":"main"}"#).unwrap();
        assert_eq!(parsed.endpoint.as_deref(), Some("main"));
        assert!(serde_json::from_str::<WakeRequest>(r#"{"endpoint":"a","x":1}"#).is_err());
        let response = WakeResponse {
            endpoint: "main".into(),
            address: "127.0.0.1:55432".into(),
        };
        let text = serde_json::to_string(&response).unwrap();
        assert_eq!(text, r#"{"endpoint":"main","address":"127.0.0.1:55432"}"#);
    }
}
