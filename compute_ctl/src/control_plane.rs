//! Starting from the control plane: the spec fetched over HTTP
//! (`--control-plane-uri`, `--compute-id`), and the W3C trace context the
//! control plane hands over in `TRACEPARENT`, which every line of the start
//! carries (`trace_id`) and the spec request passes on (`traceparent`).

use std::time::Duration;

use anyhow::{bail, Context};
use compute_api::ComputeSpec;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long the control plane may take to answer with the spec (it may
/// be starting too).
const SPEC_FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// A W3C `traceparent`: `00-<trace id, 32 hex>-<parent id, 16 hex>-<flags>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: String,
    pub parent_id: String,
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` unless well formed (version
    /// `00`, lowercase hex, ids not all zero).
    pub fn parse(text: &str) -> Option<TraceParent> {
        let parts: Vec<&str> = text.trim().split('-').collect();
        let [version, trace_id, parent_id, flags] = parts.as_slice() else {
            return None;
        };
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && s.bytes().any(|b| b != b'0')
        };
        if *version != "00" || !hex(trace_id, 32) || !hex(parent_id, 16) || flags.len() != 2 {
            return None;
        }
        Some(TraceParent {
            trace_id: (*trace_id).to_owned(),
            parent_id: (*parent_id).to_owned(),
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// The context in `TRACEPARENT`, if any (an invalid one is logged and
    /// ignored).
    pub fn from_env() -> Option<TraceParent> {
        let text = std::env::var("TRACEPARENT").ok()?;
        let parsed = Self::parse(&text);
        if parsed.is_none() {
            warn!("ignoring TRACEPARENT {text:?}: not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)");
        }
        parsed
    }

    /// The header value to pass on.
    pub fn header(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.parent_id, self.flags)
    }
}

/// Fetches compute `compute_id`'s spec from the control plane at `base`,
/// retrying while it cannot be reached or answers 5xx.
pub async fn fetch_spec(
    base: &str,
    compute_id: &str,
    trace: Option<&TraceParent>,
    cancel: &CancellationToken,
) -> anyhow::Result<ComputeSpec> {
    let url = control_plane_api::compute_spec_url(base, compute_id);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .context("creating the HTTP client")?;
    let deadline = Instant::now() + SPEC_FETCH_TIMEOUT;
    let token = auth::token_from_env();
    loop {
        let mut request = client.get(&url);
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        if let Some(trace) = trace {
            request = request.header("traceparent", trace.header());
        }
        let problem = match request.send().await {
            Ok(response) if response.status().is_success() => {
                let text = response
                    .text()
                    .await
                    .with_context(|| format!("reading the spec from {url}"))?;
                let spec = ComputeSpec::from_json(&text)
                    .with_context(|| format!("in the spec from {url}"))?;
                info!(%url, "fetched the compute spec from the control plane");
                return Ok(spec);
            }
            Ok(response) if response.status().is_server_error() => {
                format!("{url} answered {}", response.status())
            }
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                bail!("the control plane answered {status} for {url}: {body}");
            }
            Err(e) => format!("asking {url}: {e}"),
        };
        if Instant::now() >= deadline {
            bail!("no compute spec within {SPEC_FETCH_TIMEOUT:?}: {problem}");
        }
        info!("{problem}; retrying");
        tokio::select! {
            _ = cancel.cancelled() => bail!("cancelled while fetching the spec"),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent() {
        let t =
            TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(t.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(t.parent_id, "b7ad6b7169203331");
        assert_eq!(t.flags, 1);
        assert_eq!(
            t.header(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-zz",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }
}
