//! `GET /metrics`: the workers' summed counters and gauges in the Prometheus/OpenMetrics text
//! format. A fresh registry is filled from one snapshot per scrape, so every value in a
//! scrape comes from the same moment and nothing is kept between scrapes.
//!
//! Labels come from fixed sets (transport, direction, reason, error code): never a user
//! name or an address, so the number of series is bounded.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::AppState;
use crate::proto::Transport;
use crate::telemetry::{HistogramSnapshot, UsageSnapshot, WorkerReport};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let instance = state.ctx.drain.as_deref().map(|c| Instance {
        draining: c.drain_status().draining,
        revocations: c.revocations_active(),
    });
    let telemetry = &state.ctx.telemetry;
    let mut response =
        render(&telemetry.total(), &telemetry.usage.snapshot(), instance).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// One label, from a fixed set of values.
type Label = [(&'static str, String); 1];

/// What the running server's control reports beside the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    pub draining: bool,
    pub revocations: usize,
}

/// The report as OpenMetrics text, with `turnpike_draining` and `turnpike_revocations_active`
/// when the server's control is known. Counter names get their `_total` suffix from the
/// encoder.
pub fn render(report: &WorkerReport, usage: &UsageSnapshot, instance: Option<Instance>) -> String {
    let stats = &report.stats;
    let gauges = &report.gauges;
    let mut registry = Registry::default();
    let r = &mut registry;

    gauge_family(
        r,
        "turnpike_allocations_active",
        "Allocations now, by client transport",
        "transport",
        Transport::ALL.map(|t| (t.as_str(), gauges.allocations[t as usize])),
    );
    counter_family(
        r,
        "turnpike_allocations",
        "Allocations created, by client transport",
        "transport",
        Transport::ALL.map(|t| (t.as_str(), stats.allocations_created[t as usize])),
    );
    counter_family(
        r,
        "turnpike_allocations_ended",
        "Allocations ended: lifetime ran out, or deleted by the client",
        "reason",
        [
            ("expired", stats.allocations_expired),
            ("deleted", stats.allocations_deleted),
        ],
    );
    gauge(
        r,
        "turnpike_stream_buffer_bytes",
        "Bytes held in userspace for TCP/TLS clients: partial frames and unsent answers",
        report.stream_buffer_bytes,
    );
    gauge(
        r,
        "turnpike_permissions_active",
        "Unexpired permissions",
        gauges.permissions,
    );
    gauge(
        r,
        "turnpike_channels_active",
        "Unexpired channel bindings",
        gauges.channels,
    );
    counter_family(
        r,
        "turnpike_relayed_packets",
        "Datagrams relayed, by direction",
        "direction",
        [
            ("to_peer", stats.to_peer_packets),
            ("to_client", stats.from_peer_packets),
        ],
    );
    counter_family(
        r,
        "turnpike_relayed_bytes",
        "Application bytes relayed, by direction",
        "direction",
        [
            ("to_peer", stats.to_peer_bytes),
            ("to_client", stats.from_peer_bytes),
        ],
    );
    // The same counts split by the path that relayed them: turnpike_relayed_* above are
    // userspace's alone; the XDP program's (src/net/xdp.rs) come from its maps.
    let kernel = &report.kernel;
    for (name, help, values) in [
        (
            "turnpike_datapath_relayed_packets",
            "Datagrams relayed, by direction and by the path that relayed them",
            [
                (stats.to_peer_packets, stats.from_peer_packets),
                (kernel.to_peer_packets, kernel.to_client_packets),
            ],
        ),
        (
            "turnpike_datapath_relayed_bytes",
            "Application bytes relayed, by direction and by the path that relayed them",
            [
                (stats.to_peer_bytes, stats.from_peer_bytes),
                (kernel.to_peer_bytes, kernel.to_client_bytes),
            ],
        ),
    ] {
        let family = Family::<[(&'static str, String); 2], Counter>::default();
        for (datapath, (to_peer, to_client)) in ["userspace", "kernel"].into_iter().zip(values) {
            for (direction, n) in [("to_peer", to_peer), ("to_client", to_client)] {
                family
                    .get_or_create(&[
                        ("datapath", datapath.to_owned()),
                        ("direction", direction.to_owned()),
                    ])
                    .inc_by(n);
            }
        }
        r.register(name, help, family);
    }
    gauge(
        r,
        "turnpike_xdp_attached",
        "1 if the XDP program relays established channels in the kernel",
        u64::from(kernel.attached),
    );
    gauge(
        r,
        "turnpike_xdp_channels",
        "Channels relayed in the kernel: entry pairs in the XDP program's maps",
        kernel.channels,
    );
    // Every reason, zero without the program, so the series exist before the first frame.
    let passed = Family::<Label, Counter>::default();
    for reason in crate::net::xdp::REASONS.into_iter().flatten() {
        let n = kernel
            .passed
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n);
        passed
            .get_or_create(&[("reason", reason.to_owned())])
            .inc_by(n);
    }
    r.register(
        "turnpike_xdp_passed",
        "Frames the XDP program handed to the kernel stack untouched, by reason",
        passed,
    );
    counter(
        r,
        "turnpike_binding_requests",
        "STUN Binding requests answered",
        stats.binding_requests,
    );
    let errors = Family::<Label, Counter>::default();
    for (code, n) in stats.errors.iter() {
        errors
            .get_or_create(&[("code", code.to_string())])
            .inc_by(n);
    }
    r.register(
        "turnpike_error_responses",
        "STUN error responses sent, by error code",
        errors,
    );
    counter_family(
        r,
        "turnpike_auth_failures",
        "Requests that failed authentication, by reason",
        "reason",
        [
            ("missing", stats.auth_missing),
            ("stale_nonce", stats.auth_stale_nonce),
            ("expired", stats.auth_expired),
            ("unknown_user", stats.auth_unknown_user),
            ("bad_integrity", stats.auth_bad_integrity),
            ("bad_password_algorithm", stats.auth_bad_algorithm),
        ],
    );
    counter(
        r,
        "turnpike_challenges_suppressed",
        "401/438 challenges not sent because the source IP or the whole server exceeded its rate",
        stats.challenges_suppressed,
    );
    counter(
        r,
        "turnpike_denied_peers",
        "Permissions or channels refused because the peer address is denied",
        stats.denied_peers,
    );
    counter_family(
        r,
        "turnpike_cut_by_reload",
        "Live permissions and channels ended because a reloaded peer filter denies their peer",
        "kind",
        [
            ("permission", stats.permissions_cut_by_reload),
            ("channel", stats.channels_cut_by_reload),
        ],
    );
    counter_family(
        r,
        "turnpike_quota_rejections",
        "Allocations refused by the per-user (486) or server-wide (508) quota",
        "scope",
        [("user", stats.quota_user), ("server", stats.quota_total)],
    );
    counter(
        r,
        "turnpike_malformed_packets",
        "Datagrams that were neither STUN nor ChannelData, or failed to parse",
        stats.malformed,
    );
    counter_family(
        r,
        "turnpike_dropped_packets",
        "Well-formed packets dropped, by reason",
        "reason",
        [
            ("no_route", stats.dropped),
            ("no_permission", stats.peer_without_permission),
            ("bandwidth", stats.bandwidth_dropped),
            ("too_large", stats.too_large_dropped),
            ("unknown_attribute", stats.unknown_attribute_dropped),
        ],
    );
    counter(
        r,
        "turnpike_send_errors",
        "Datagrams the kernel refused to send",
        report.send_errors,
    );
    let per_sink = |counts: &[(crate::usage::Sink, u64)]| {
        let family = Family::<Label, Counter>::default();
        for (sink, n) in counts {
            family
                .get_or_create(&[("sink", sink.as_str().to_owned())])
                .inc_by(*n);
        }
        family
    };
    r.register(
        "turnpike_usage_records",
        "Usage records delivered, by sink",
        per_sink(&usage.delivered),
    );
    r.register(
        "turnpike_usage_records_dropped",
        "Usage records lost: the sink's queue was full, or delivery was given up",
        per_sink(&usage.dropped),
    );
    r.register(
        "turnpike_allocation_duration_seconds",
        "How long ended allocations lived",
        Snapshot(usage.duration.clone()),
    );
    r.register(
        "turnpike_allocation_bytes",
        "Bytes ended allocations relayed, both directions together",
        Snapshot(usage.bytes.clone()),
    );
    if let Some(instance) = instance {
        gauge(
            r,
            "turnpike_draining",
            "1 while draining (new Allocates sent elsewhere), else 0",
            u64::from(instance.draining),
        );
        gauge(
            r,
            "turnpike_revocations_active",
            "Users whose credentials are revoked now (POST /api/v1/revocations)",
            instance.revocations as u64,
        );
    }
    let build = Family::<Label, Gauge>::default();
    build
        .get_or_create(&[("version", env!("CARGO_PKG_VERSION").to_owned())])
        .set(1);
    r.register("turnpike_build_info", "The running turnpike version", build);

    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

/// A histogram filled elsewhere (atomics in [`crate::telemetry::UsageMetrics`]), encoded as is.
#[derive(Debug)]
struct Snapshot(HistogramSnapshot);

impl EncodeMetric for Snapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.0.sum, self.0.count, &self.0.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric = Counter::<u64>::default();
    metric.inc_by(value);
    registry.register(name, help, metric);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric = Gauge::<i64>::default();
    metric.set(clamp(value));
    registry.register(name, help, metric);
}

fn counter_family<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: [(&str, u64); N],
) {
    let family = Family::<Label, Counter>::default();
    for (value, n) in values {
        family.get_or_create(&[(label, value.to_owned())]).inc_by(n);
    }
    registry.register(name, help, family);
}

fn gauge_family<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: [(&str, u64); N],
) {
    let family = Family::<Label, Gauge>::default();
    for (value, n) in values {
        family
            .get_or_create(&[(label, value.to_owned())])
            .set(clamp(n));
    }
    registry.register(name, help, family);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::UsageMetrics;
    use crate::usage::Sink;
    use std::time::Duration;

    #[test]
    fn usage_counters_and_histograms_are_rendered() {
        let usage = UsageMetrics::default();
        usage.observe(Duration::from_millis(1500), 2000);
        usage.observe(Duration::from_secs(70), 0);
        usage.delivered(Sink::File, 2);
        usage.dropped(Sink::Webhook, 3);
        let text = render(&WorkerReport::default(), &usage.snapshot(), None);
        for line in [
            "# TYPE turnpike_allocation_duration_seconds histogram",
            "turnpike_allocation_duration_seconds_sum 71.5",
            "turnpike_allocation_duration_seconds_count 2",
            "turnpike_allocation_duration_seconds_bucket{le=\"1.0\"} 0",
            "turnpike_allocation_duration_seconds_bucket{le=\"4.0\"} 1",
            "turnpike_allocation_duration_seconds_bucket{le=\"256.0\"} 2",
            "turnpike_allocation_duration_seconds_bucket{le=\"+Inf\"} 2",
            "turnpike_allocation_bytes_sum 2000.0",
            "turnpike_allocation_bytes_bucket{le=\"1024.0\"} 1",
            "turnpike_allocation_bytes_bucket{le=\"8192.0\"} 2",
            "turnpike_usage_records_total{sink=\"file\"} 2",
            "turnpike_usage_records_total{sink=\"log\"} 0",
            "turnpike_usage_records_dropped_total{sink=\"webhook\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }
}
