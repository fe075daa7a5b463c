//! Plumbing shared by every daemon of the system (pageserver, safekeeper,
//! storage broker, compute_ctl, proxy):
//!
//! * [`launch`]: the whole life of a daemon process — logging, config file plus
//!   command-line overrides, the tokio runtime, shutdown on SIGTERM/SIGINT, and
//!   one clear error line when it fails.
//! * [`load_config`]: TOML configuration files whose errors name the file, line
//!   and column.
//! * [`HttpServer`]: the management API server with `GET /v1/status` and
//!   `GET /metrics` on every daemon, over HTTP/1 and HTTP/2, optionally with a
//!   gRPC service on the same port.
//! * [`ApiRoutes`]: a daemon's own routes, listed, with its OpenAPI
//!   document at `GET /v1/openapi.json` ([`openapi_mismatches`] checks the
//!   document against the routes).

mod config;
mod http;
mod launch;
mod openapi;

pub use config::load_config;
pub use http::{
    bind_listener, load_verifier, tenant_routes_policy, ApiError, AuthPolicy, HttpServer,
    RouteRequest, MAX_CONCURRENT_REQUESTS,
};
pub use launch::{
    init_tracing, launch, shutdown_on_signals, CommonArgs, ConnectionLimitArgs, ServiceInfo,
};
pub use openapi::{openapi_mismatches, ApiRoutes, OPENAPI_PATH};
pub use tokio_util::sync::CancellationToken;

/// The [`ServiceInfo`] of the calling crate: `service_info!("pageserver")`.
#[macro_export]
macro_rules! service_info {
    ($name:expr) => {
        $crate::ServiceInfo {
            name: $name,
            version: env!("CARGO_PKG_VERSION"),
        }
    };
}

/// Overwrites config fields with the command-line values that were given:
/// `apply_overrides!(config, cli, id, listen_http_addr)` sets
/// `config.id = v` when `cli.id` is `Some(v)`. The CLI struct's fields must
/// be `Option`s named like the config's fields.
#[macro_export]
macro_rules! apply_overrides {
    ($config:expr, $cli:expr, $($field:ident),+ $(,)?) => {
        {
            $( if let Some(value) = $cli.$field { $config.$field = value; } )+
        }
    };
}
