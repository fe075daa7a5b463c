//! The proxy's client of the control plane's wake API
//! ([`control_plane_api`]).

use std::time::Duration;

use control_plane_api::{ErrorBody, WakeRequest, WakeResponse, WAKE_COMPUTE_PATH};

use crate::routing::Target;

/// The wake request for a routing target.
fn wake_request(target: &Target) -> WakeRequest {
    match target {
        Target::Endpoint(name) => WakeRequest {
            endpoint: Some(name.clone()),
            ..Default::default()
        },
        Target::Branch(name) => WakeRequest {
            branch: Some(name.clone()),
            ..Default::default()
        },
        Target::Default => WakeRequest::default(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    /// No such endpoint or branch.
    #[error("{0}")]
    NotFound(String),
    /// The control plane answered, but could not start the compute.
    #[error("could not start the compute: {0}")]
    Failed(String),
    /// The control plane could not be reached or answered nonsense.
    #[error("the control plane is unavailable: {0}")]
    Unavailable(String),
}

/// A client of the control plane's wake API.
#[derive(Clone)]
pub struct ControlPlane {
    client: reqwest::Client,
    wake_url: String,
    /// A `proxy` token for the wake API.
    token: Option<String>,
}

impl ControlPlane {
    /// `base` is the API's URL, e.g. `http://127.0.0.1:1234`; `timeout`
    /// bounds one wake, a compute start included.
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<ControlPlane> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))?;
        Ok(ControlPlane {
            client,
            wake_url: format!("{}{WAKE_COMPUTE_PATH}", base.trim_end_matches('/')),
            token: auth::token_from_env(),
        })
    }

    /// Wake the compute of `target` and return where it listens.
    pub async fn wake(&self, target: &Target) -> Result<WakeResponse, WakeError> {
        let mut request = self.client.post(&self.wake_url).json(&wake_request(target));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| WakeError::Unavailable(format!("{}: {e}", self.wake_url)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| WakeError::Unavailable(format!("reading the answer: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                WakeError::Unavailable(format!("unreadable answer ({e}): {}", lossy(&body)))
            });
        }
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| lossy(&body));
        Err(if status == reqwest::StatusCode::NOT_FOUND {
            WakeError::NotFound(message)
        } else if status.is_server_error() || status.is_client_error() {
            WakeError::Failed(message)
        } else {
            WakeError::Unavailable(format!("HTTP {status}: {message}"))
        })
    }
}

fn lossy(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(500)]);
    text.trim().to_owned()
}
