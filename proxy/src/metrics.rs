//! The proxy's metrics, served at `/metrics` beside the standard ones.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

pub struct Metrics {
    pub connections: IntCounter,
    pub active: IntGauge,
    pub refused: IntCounter,
    pub wake_seconds: Histogram,
    pub wake_failures: IntCounter,
    pub cancels: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        Metrics {
            connections: counter("proxy_connections_total", "Client connections accepted"),
            active: IntGauge::new("proxy_active_sessions", "Sessions being relayed")
                .expect("valid metric"),
            refused: counter(
                "proxy_refused_connections_total",
                "Connections answered with an error",
            ),
            wake_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "proxy_wake_compute_seconds",
                    "Time to wake a compute (a start included)",
                )
                .buckets(vec![0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
            )
            .expect("valid metric"),
            wake_failures: counter("proxy_wake_failures_total", "Wakes that failed"),
            cancels: counter("proxy_cancel_requests_total", "Cancel requests forwarded"),
        }
    }

    pub fn register(&self, registry: &Registry) -> anyhow::Result<()> {
        registry.register(Box::new(self.connections.clone()))?;
        registry.register(Box::new(self.active.clone()))?;
        registry.register(Box::new(self.refused.clone()))?;
        registry.register(Box::new(self.wake_seconds.clone()))?;
        registry.register(Box::new(self.wake_failures.clone()))?;
        registry.register(Box::new(self.cancels.clone()))?;
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
