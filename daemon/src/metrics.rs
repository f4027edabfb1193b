//! Prometheus metrics (`GET /metrics`, text exposition format): syntheses and their
//! latency, bytes in and out, sessions, HTTP answers.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    syntheses: Family<Labels, Counter>,
    synthesis_seconds: Histogram,
    synthesis_step_seconds: Family<Labels, Histogram>,
    received_bytes: Counter,
    sent_bytes: Counter,
    sessions: Family<Labels, Gauge>,
    standby_vms: Gauge,
    synthesis_standby_vms: Gauge,
    responses: Family<Labels, Counter>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 50 ms .. ~205 s
    exponential_buckets(0.05, 2.0, 13)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cloudlet");
        let syntheses = Family::<Labels, Counter>::default();
        registry.register(
            "syntheses",
            "Syntheses finished, by result (ok, error)",
            syntheses.clone(),
        );
        let synthesis_seconds = Histogram::new(latency_buckets());
        registry.register(
            "synthesis_duration_seconds",
            "Time from request to running VM, successful syntheses",
            synthesis_seconds.clone(),
        );
        let synthesis_step_seconds =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register(
            "synthesis_step_duration_seconds",
            "Time of each synthesis step (decode, restore, boot, ports)",
            synthesis_step_seconds.clone(),
        );
        let received_bytes = Counter::default();
        registry.register(
            "received_bytes",
            "Request body bytes received (overlays, archives, uploads)",
            received_bytes.clone(),
        );
        let sent_bytes = Counter::default();
        registry.register(
            "sent_bytes",
            "File bytes sent (overlay and base downloads)",
            sent_bytes.clone(),
        );
        let sessions = Family::<Labels, Gauge>::default();
        registry.register(
            "active_sessions",
            "Sessions with a VM, by kind (base, overlay, synthesis)",
            sessions.clone(),
        );
        let standby_vms = Gauge::default();
        registry.register(
            "standby_vms",
            "Paused base VMs kept ready for the next overlay session (overlay_standby)",
            standby_vms.clone(),
        );
        let synthesis_standby_vms = Gauge::default();
        registry.register(
            "synthesis_standby_vms",
            "Restores of a base started and fed its pages, waiting for the next synthesis \
             on that base (synthesis_standby; one per base at most)",
            synthesis_standby_vms.clone(),
        );
        let responses = Family::<Labels, Counter>::default();
        registry.register(
            "http_responses",
            "HTTP answers by status code",
            responses.clone(),
        );
        Self {
            registry,
            syntheses,
            synthesis_seconds,
            synthesis_step_seconds,
            received_bytes,
            sent_bytes,
            sessions,
            standby_vms,
            synthesis_standby_vms,
            responses,
        }
    }
}

impl Metrics {
    /// A synthesis ended; `steps` are its step timings in ms when it succeeded.
    pub fn synthesis_done(
        &self,
        ok: bool,
        elapsed: std::time::Duration,
        steps: &std::collections::BTreeMap<String, u64>,
    ) {
        let result = if ok { "ok" } else { "error" };
        self.syntheses
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
        if ok {
            self.synthesis_seconds.observe(elapsed.as_secs_f64());
            for step in ["decode", "restore", "restore_stream", "boot", "ports"] {
                if let Some(ms) = steps.get(step) {
                    self.synthesis_step_seconds
                        .get_or_create(&vec![("step", step.to_string())])
                        .observe(f64::from(u32::try_from(*ms).unwrap_or(u32::MAX)) / 1000.0);
                }
            }
        }
    }

    /// Request body bytes arrived.
    pub fn received(&self, bytes: u64) {
        self.received_bytes.inc_by(bytes);
    }

    /// File bytes are being sent.
    pub fn sent(&self, bytes: u64) {
        self.sent_bytes.inc_by(bytes);
    }

    /// How many synthesis standbys are ready now.
    pub fn synthesis_standby_vms(&self, n: i64) {
        self.synthesis_standby_vms.set(n);
    }

    /// How many standby VMs are ready now.
    pub fn standby_vms(&self, n: i64) {
        self.standby_vms.set(n);
    }

    /// An HTTP answer went out.
    pub fn response(&self, status: u16) {
        self.responses
            .get_or_create(&vec![("code", status.to_string())])
            .inc();
    }

    /// The text exposition, with the session gauges set from `active` (kind → count).
    pub fn render(&self, active: &[(String, i64)]) -> String {
        self.sessions.clear();
        for kind in ["base", "overlay", "synthesis"] {
            let n = active
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, n)| *n)
                .sum();
            self.sessions
                .get_or_create(&vec![("kind", kind.to_string())])
                .set(n);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::default();
        let steps = [("decode".to_string(), 220), ("restore".to_string(), 990)]
            .into_iter()
            .collect();
        m.synthesis_done(true, std::time::Duration::from_millis(1500), &steps);
        m.synthesis_done(
            false,
            std::time::Duration::from_millis(10),
            &Default::default(),
        );
        m.received(1000);
        m.sent(10);
        m.response(201);
        let text = m.render(&[("synthesis".into(), 2)]);
        for line in [
            "cloudlet_syntheses_total{result=\"ok\"} 1",
            "cloudlet_syntheses_total{result=\"error\"} 1",
            "cloudlet_synthesis_duration_seconds_count 1",
            "cloudlet_synthesis_step_duration_seconds_count{step=\"restore\"} 1",
            "cloudlet_received_bytes_total 1000",
            "cloudlet_sent_bytes_total 10",
            "cloudlet_active_sessions{kind=\"synthesis\"} 2",
            "cloudlet_active_sessions{kind=\"base\"} 0",
            "cloudlet_http_responses_total{code=\"201\"} 1",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
    }
}
