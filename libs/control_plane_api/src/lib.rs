//! The control plane's wake API, the contract between the proxy and the
//! control plane (neon_local's control-plane service).
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
