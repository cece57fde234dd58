//! Sluice's Prometheus metrics: one registry for the process, with every metric declared
//! here, its help text and its labels. Labels only ever carry bounded values (listener
//! names, reply classes, stages, outcomes), never addresses or message ids.
//!
//! The SMTP session, the queue's users and delivery update them through [`global`]; the HTTP
//! listener (`sluice-http`) renders [`Metrics::render`] at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::OnceLock;

/// Series types callers keep, once looked up, instead of looking them up per event.
pub use prometheus::{Histogram as HistogramSeries, IntCounter as CounterSeries};

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// SMTP connections accepted, by listener.
    pub smtp_connections: IntCounterVec,
    /// SMTP replies sent, by listener and class (`2xx`, `3xx`, `4xx`, `5xx`).
    pub smtp_replies: IntCounterVec,
    /// SMTP commands received, by listener and command (`ehlo`, `mail`, ..., `other`).
    pub smtp_commands: IntCounterVec,
    /// STARTTLS handshakes, by listener and result (`ok`, `failed`).
    pub tls_handshakes: IntCounterVec,
    /// AUTH attempts, by listener and result (`success`, `failure`).
    pub auth: IntCounterVec,
    /// Connections refused at connect, by listener and reason (`banned`, `address_rate`,
    /// `network_rate`).
    pub connections_refused: IntCounterVec,
    /// Addresses banned after failed AUTH attempts.
    pub auth_bans: IntCounterVec,
    /// 4xx and 5xx replies by listener, stage and class: what was refused where.
    pub smtp_refusals: IntCounterVec,
    /// Expired entries purged, by store (`kv`, `archive`, `events`: the event history).
    pub purged: IntCounterVec,
    /// Messages queued after a 250, by listener and kind (`normal`, `quarantined`).
    pub messages_queued: IntCounterVec,
    /// Messages refused at end of data, by listener and reply class (`4xx`, `5xx`).
    pub messages_refused: IntCounterVec,
    /// Time from the end of the client's data to the reply, seconds.
    pub end_of_data_seconds: Histogram,
    /// Recipient delivery outcomes (`delivered`, `deferred`, `bounced`).
    pub deliveries: IntCounterVec,
    /// Time from a message's arrival to its delivery to one recipient, seconds.
    pub delivery_latency_seconds: Histogram,
    /// Messages waiting in the delivery schedule.
    pub queue_scheduled: IntGauge,
    /// Delivery attempts running.
    pub queue_in_flight: IntGauge,
    /// How long each of the queue's group commits took.
    pub queue_commit_seconds: Histogram,
    /// Writes each group commit covered.
    pub queue_commit_writes: Histogram,
    /// Messages in the queue by state, from a periodic scan.
    pub queue_messages: IntGaugeVec,
    /// Events put on the event bus.
    pub events_published: IntCounterVec,
    /// Events the event chain acknowledged, deferred (retried later) or let expire.
    pub events_handled: IntCounterVec,
    /// Plugin step calls, seconds, by chain, step and stage.
    pub plugin_call_seconds: HistogramVec,
    /// Plugin step verdicts, by chain, step and verdict.
    pub plugin_verdicts: IntCounterVec,
    /// Each message's summed data-stage score, by chain.
    pub message_score: HistogramVec,
    /// Plugin step failures, by chain, step and kind (`timeout`, `wall_timeout`, `memory`,
    /// `trap`, `edit`, `oversized`, `symbols`).
    pub plugin_errors: IntCounterVec,
    /// Plugin instances created, by chain and step: one per call for a fresh step, one per
    /// `recycle_after` calls (or failure) for a warm one.
    pub plugin_instances: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let fast = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let slow = vec![
            0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0,
        ];
        Metrics {
            smtp_connections: counter(
                &r,
                "sluice_smtp_connections_total",
                "SMTP connections accepted, by listener.",
                &["listener"],
            ),
            smtp_replies: counter(
                &r,
                "sluice_smtp_replies_total",
                "SMTP replies sent, by listener and reply class.",
                &["listener", "class"],
            ),
            smtp_commands: counter(
                &r,
                "sluice_smtp_commands_total",
                "SMTP commands received, by listener and command (ehlo, helo, mail, rcpt, data, bdat, auth, starttls, rset, noop, quit, vrfy, expn, help, other).",
                &["listener", "command"],
            ),
            tls_handshakes: counter(
                &r,
                "sluice_smtp_tls_handshakes_total",
                "STARTTLS handshakes, by listener and result.",
                &["listener", "result"],
            ),
            auth: counter(
                &r,
                "sluice_smtp_auth_total",
                "SMTP AUTH attempts, by listener and result.",
                &["listener", "result"],
            ),
            connections_refused: counter(
                &r,
                "sluice_smtp_connections_refused_total",
                "SMTP connections refused at connect, by listener and reason (banned, address_rate, network_rate).",
                &["listener", "reason"],
            ),
            auth_bans: counter(
                &r,
                "sluice_smtp_auth_bans_total",
                "Client addresses banned after too many failed AUTH attempts, by listener.",
                &["listener"],
            ),
            smtp_refusals: counter(
                &r,
                "sluice_smtp_refusals_total",
                "SMTP 4xx and 5xx replies, by listener, stage (connect, ehlo, mail, rcpt, data, auth, starttls, other) and class.",
                &["listener", "stage", "class"],
            ),
            purged: counter(
                &r,
                "sluice_store_purged_total",
                "Expired entries purged, by store (kv: plugin key-value data, archive: archived messages, events: the event history, quarantine: quarantined messages past their retention).",
                &["store"],
            ),
            messages_queued: counter(
                &r,
                "sluice_messages_queued_total",
                "Messages queued (answered 250), by listener and kind.",
                &["listener", "kind"],
            ),
            messages_refused: counter(
                &r,
                "sluice_messages_refused_total",
                "Messages refused at end of data, by listener and reply class.",
                &["listener", "class"],
            ),
            end_of_data_seconds: histogram(
                &r,
                "sluice_smtp_end_of_data_seconds",
                "Time from the end of a client's message data to the reply (checks, policy, durable enqueue).",
                fast.clone(),
            ),
            deliveries: counter(
                &r,
                "sluice_deliveries_total",
                "Recipient delivery attempt outcomes.",
                &["outcome"],
            ),
            delivery_latency_seconds: histogram(
                &r,
                "sluice_delivery_latency_seconds",
                "Time from a message's arrival to its delivery to a recipient.",
                slow,
            ),
            queue_scheduled: gauge(
                &r,
                "sluice_queue_scheduled",
                "Messages waiting in the delivery schedule.",
            ),
            queue_in_flight: gauge(&r, "sluice_queue_in_flight", "Delivery attempts running."),
            queue_commit_seconds: histogram(
                &r,
                "sluice_queue_commit_seconds",
                "Time of one group commit of the queue: the fsyncs that make a group of \
                 writes durable (a slow disk shows here first).",
                fast,
            ),
            queue_commit_writes: histogram(
                &r,
                "sluice_queue_commit_writes",
                "Writes waiting for durability (enqueues, updates) one group commit covered.",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            ),
            queue_messages: gauge_vec(
                &r,
                "sluice_queue_messages",
                "Messages in the queue by state (pending: a recipient not tried yet; deferred: waiting for a retry; quarantined), from a scan of the queue every 15 s or more.",
                &["state"],
            ),
            events_published: counter(
                &r,
                "sluice_events_published_total",
                "Events put on the event bus, by kind.",
                &["kind"],
            ),
            events_handled: counter(
                &r,
                "sluice_events_handled_total",
                "Events the event chain acknowledged, deferred or let expire.",
                &["result"],
            ),
            plugin_call_seconds: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "sluice_plugin_call_seconds",
                        "Plugin step calls, by chain, step and stage.",
                    )
                    .buckets(vec![
                        0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01,
                        0.1, 1.0,
                    ]),
                    &["chain", "step", "stage"],
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("registered once");
                h
            },
            message_score: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "sluice_message_score",
                        "Summed data-stage score of each message whose chain ran to its end, by chain (spam and other scoring steps; the thresholds act on it).",
                    )
                    .buckets(vec![
                        -5.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 9.0, 12.0, 15.0, 20.0, 30.0,
                    ]),
                    &["chain"],
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("registered once");
                h
            },
            plugin_verdicts: counter(
                &r,
                "sluice_plugin_verdicts_total",
                "Plugin step verdicts, by chain, step and verdict.",
                &["chain", "step", "verdict"],
            ),
            plugin_errors: counter(
                &r,
                "sluice_plugin_errors_total",
                "Plugin step failures, by chain, step and kind.",
                &["chain", "step", "kind"],
            ),
            plugin_instances: counter(
                &r,
                "sluice_plugin_instances_total",
                "Plugin instances created, by chain and step (fresh steps: one per call).",
                &["chain", "step"],
            ),
            registry: r,
        }
    }

    /// The name of every metric declared, whether or not it has samples yet.
    pub fn names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let all: [&dyn Collector; 25] = [
            &self.smtp_connections,
            &self.smtp_replies,
            &self.smtp_commands,
            &self.message_score,
            &self.tls_handshakes,
            &self.auth,
            &self.connections_refused,
            &self.auth_bans,
            &self.smtp_refusals,
            &self.purged,
            &self.messages_queued,
            &self.messages_refused,
            &self.end_of_data_seconds,
            &self.deliveries,
            &self.delivery_latency_seconds,
            &self.queue_scheduled,
            &self.queue_in_flight,
            &self.queue_commit_seconds,
            &self.queue_commit_writes,
            &self.queue_messages,
            &self.events_published,
            &self.events_handled,
            &self.plugin_call_seconds,
            &self.plugin_verdicts,
            &self.plugin_instances,
        ];
        let mut names: Vec<String> = all
            .iter()
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
            .collect();
        names.extend(
            self.plugin_errors
                .desc()
                .into_iter()
                .map(|d| d.fq_name.clone()),
        );
        names
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of registered metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The class of an SMTP reply code: `2xx`, `3xx`, `4xx` or `5xx`.
pub fn class(code: u16) -> &'static str {
    match code / 100 {
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// Event kinds with a bounded label: the contract's kinds, `other` for the rest.
pub fn event_kind(kind: &str) -> &'static str {
    match kind {
        "queued" => "queued",
        "delivered" => "delivered",
        "deferred" => "deferred",
        "bounced" => "bounced",
        "rejected" => "rejected",
        "quarantined" => "quarantined",
        "opened" => "opened",
        "clicked" => "clicked",
        "unsubscribed" => "unsubscribed",
        "complained" => "complained",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_and_counts_show() {
        let m = global();
        m.smtp_connections.with_label_values(&["mx"]).inc();
        m.deliveries.with_label_values(&["delivered"]).inc_by(2);
        let text = m.render();
        assert!(
            text.contains("sluice_smtp_connections_total{listener=\"mx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_deliveries_total{outcome=\"delivered\"} 2"),
            "{text}"
        );
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no help for {name}"
            );
        }
    }
}
