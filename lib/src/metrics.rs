//! What the server counts for its operators, and — with the `metrics` feature — the
//! Prometheus text (OpenMetrics format, written by the `prometheus-client` crate) that
//! `/wtchat/metrics` serves. The counting is plain atomics, the same with or without it.
//!
//! The hot path touches no shared counter. What grows with every delivery — frames, bytes
//! and messages sent, a message's time from publish to its write — is counted by each
//! connection in counters of its own ([`ConnectionStats`], written only by its session,
//! once per batch) and summed when scraped; a closed connection's counts join the totals
//! once. Counters that grow once per event (a join, a message published, a refused frame,
//! a disconnect, an engine write) are shared: they cost one atomic add per event, never one
//! per recipient.

// Without the `metrics` feature nothing reads the counts (there is no /wtchat/metrics).
#![cfg_attr(not(feature = "metrics"), allow(dead_code))]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::Transport;
use crate::protocol::now_ms;
use crate::protocol::{CloseCode, ErrorCode};
use crate::queue::{Kind, Outbound};

/// Upper bounds of the publish-to-write latency buckets, in milliseconds.
const LATENCY_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10_000];

/// Every transport, in the order the metrics list them.
const TRANSPORTS: [Transport; 4] = [
    Transport::WebTransport,
    Transport::WebSocket,
    Transport::Sse,
    Transport::LongPoll,
];

/// Counts by label: for events that are rare next to deliveries (a refused frame, a
/// disconnect, a webhook call), so one lock per event is fine.
#[derive(Debug, Default)]
struct ByLabel<L: Ord>(Mutex<BTreeMap<L, u64>>);

impl<L: Ord + Clone> ByLabel<L> {
    fn inc(&self, label: L) {
        *self.0.lock().unwrap().entry(label).or_insert(0) += 1;
    }

    #[cfg(feature = "metrics")]
    fn counts(&self) -> Vec<(L, u64)> {
        let counts = self.0.lock().unwrap();
        counts.iter().map(|(l, n)| (l.clone(), *n)).collect()
    }
}

/// Upper bounds of the engine's write-duration buckets, in seconds: 100 µs to 2.5 s.
const ENGINE_SECONDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The engine's side: how long its writes take, and how many failed. Shared by the engine
/// and the scrape.
#[derive(Debug, Clone, Default)]
pub(crate) struct EngineStats(Arc<EngineCounts>);

#[derive(Debug, Default)]
struct EngineCounts {
    /// Writes per bucket of [`ENGINE_SECONDS`] (and one past the last).
    buckets: [AtomicU64; ENGINE_SECONDS.len() + 1],
    /// Their total duration, in nanoseconds.
    sum_ns: AtomicU64,
    errors: AtomicU64,
}

impl EngineStats {
    /// One write (a commit, a pipeline to Redis) that took `took`.
    #[cfg_attr(not(any(feature = "sqlite", feature = "redis")), allow(dead_code))]
    pub(crate) fn wrote(&self, took: Duration, ok: bool) {
        let seconds = took.as_secs_f64();
        let bucket = ENGINE_SECONDS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(ENGINE_SECONDS.len());
        self.0.buckets[bucket].fetch_add(1, Relaxed);
        self.0
            .sum_ns
            .fetch_add(took.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
        if !ok {
            self.0.errors.fetch_add(1, Relaxed);
        }
    }
}

/// What one connection sent: written by its session only, read when scraped.
#[derive(Debug)]
pub(crate) struct ConnectionStats {
    transport: Transport,
    frames: AtomicU64,
    bytes: AtomicU64,
    delivered: AtomicU64,
    /// Publish-to-write latency of the first message of each batch: a count per bucket of
    /// [`LATENCY_MS`] (and one past the last), and their sum in ms.
    latency: [AtomicU64; LATENCY_MS.len() + 1],
    latency_sum_ms: AtomicU64,
    /// Frames waiting in the connection's queue, as of its last batch.
    queued: AtomicU64,
}

impl ConnectionStats {
    /// Counts a batch about to be written; `left` frames still wait behind it.
    pub(crate) fn sending(&self, batch: &[Outbound], left: usize) {
        let mut bytes = 0;
        let mut frames = 0;
        let mut delivered = 0;
        let mut first_time = None;
        for outbound in batch {
            if outbound.kind == Kind::Pong {
                continue;
            }
            frames += 1;
            bytes += outbound.frame.len() as u64;
            if outbound.frame.starts_with(MESSAGE) {
                delivered += 1;
                if first_time.is_none() {
                    first_time = message_time(&outbound.frame);
                }
            }
        }
        // Plain loads and stores: only this connection's session writes them.
        add(&self.frames, frames);
        add(&self.bytes, bytes);
        add(&self.delivered, delivered);
        self.queued.store(left as u64, Relaxed);
        if let Some(time) = first_time {
            let took = now_ms().saturating_sub(time);
            let bucket = LATENCY_MS
                .iter()
                .position(|&le| took <= le)
                .unwrap_or(LATENCY_MS.len());
            add(&self.latency[bucket], 1);
            add(&self.latency_sum_ms, took);
        }
    }
}

/// Adds to a counter that one task writes (no read-modify-write instruction needed).
fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.store(counter.load(Relaxed) + n, Relaxed);
    }
}

/// How `protocol::encode` starts a `message` frame.
const MESSAGE: &[u8] = br#"{"type":"message","#;

/// The `time` of a `message` frame as `protocol::encode` writes it: after the text, near
/// the end, followed by no more than the client id. Strings escape their quotes, so the
/// only `,"time":` is the field, and it is looked for from the end (not across the text).
fn message_time(frame: &[u8]) -> Option<u64> {
    const FIELD: &[u8] = br#","time":"#;
    let at = frame.windows(FIELD.len()).rposition(|w| w == FIELD)? + FIELD.len();
    let digits = frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&frame[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Sums of the counts of connections that closed.
#[derive(Debug, Default)]
struct Totals {
    frames: u64,
    bytes: u64,
    delivered: u64,
    latency: [u64; LATENCY_MS.len() + 1],
    latency_sum_ms: u64,
}

impl Totals {
    fn add(&mut self, c: &ConnectionStats) {
        self.frames += c.frames.load(Relaxed);
        self.bytes += c.bytes.load(Relaxed);
        self.delivered += c.delivered.load(Relaxed);
        for (total, bucket) in self.latency.iter_mut().zip(&c.latency) {
            *total += bucket.load(Relaxed);
        }
        self.latency_sum_ms += c.latency_sum_ms.load(Relaxed);
    }
}

/// The connections open now, and what the closed ones counted: one lock, so that a
/// connection is counted exactly once however a scrape and its close interleave.
#[derive(Debug, Default)]
struct Connections {
    open: HashMap<u64, Arc<ConnectionStats>>,
    closed: Totals,
}

/// Everything the server counts. One per [`Chat`](crate::Chat).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    connections: Mutex<Connections>,
    joins: AtomicU64,
    published: AtomicU64,
    /// By error code.
    refused: ByLabel<&'static str>,
    /// By close code and its name; a client that closed or vanished is (1000, "client").
    disconnects: ByLabel<(u16, &'static str)>,
    /// By webhook, and how the call went (`success`: a 2xx answer; `http_error`: another
    /// status; `timeout`; `unreachable`).
    webhook_calls: ByLabel<(&'static str, &'static str)>,
    /// By request (`post`, `poll`).
    forwarded: ByLabel<&'static str>,
    webhook_events_dropped: AtomicU64,
    pub(crate) engine: EngineStats,
    /// The certificate's `not_after`, seconds since 1970 (0: unknown).
    certificate_expiry: AtomicU64,
}

/// What the hub says about itself when scraped.
pub(crate) struct HubGauges {
    pub rooms: usize,
    pub members: usize,
}

impl Metrics {
    /// A connection opens: its own counters, until [`closed`](Self::closed).
    pub(crate) fn opened(&self, id: u64, transport: Transport) -> Arc<ConnectionStats> {
        let stats = Arc::new(ConnectionStats {
            transport,
            frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            latency: Default::default(),
            latency_sum_ms: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        });
        self.connections
            .lock()
            .unwrap()
            .open
            .insert(id, stats.clone());
        stats
    }

    /// Connection `id` closed with `code` (None: the client closed or vanished).
    pub(crate) fn closed(&self, id: u64, code: Option<CloseCode>) {
        let mut connections = self.connections.lock().unwrap();
        if let Some(stats) = connections.open.remove(&id) {
            connections.closed.add(&stats);
        }
        drop(connections);
        let label = match code {
            Some(code) => (code.code(), code.reason()),
            None => (1000, "client"),
        };
        self.disconnects.inc(label);
    }

    pub(crate) fn joined(&self) {
        self.joins.fetch_add(1, Relaxed);
    }

    /// A message handed to the engine here (a client's or the host's).
    pub(crate) fn published(&self) {
        self.published.fetch_add(1, Relaxed);
    }

    /// A client frame answered with error `code`.
    pub(crate) fn refused(&self, code: ErrorCode) {
        self.refused.inc(code.as_str());
    }

    /// A call to the host's `webhook` that went as `outcome` says.
    #[cfg_attr(not(feature = "webhooks"), allow(dead_code))]
    pub(crate) fn webhook_called(&self, webhook: &'static str, outcome: &'static str) {
        self.webhook_calls.inc((webhook, outcome));
    }

    /// A `request` (`post`, `poll`) for a session another node holds, sent on to it.
    pub(crate) fn forwarded(&self, request: &'static str) {
        self.forwarded.inc(request);
    }

    /// An event the events webhook had no room left for.
    #[cfg_attr(not(feature = "webhooks"), allow(dead_code))]
    pub(crate) fn webhook_event_dropped(&self) {
        self.webhook_events_dropped.fetch_add(1, Relaxed);
    }

    pub(crate) fn set_certificate_expiry(&self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.certificate_expiry.store(secs, Relaxed);
    }

    /// Whether the certificate is valid now (or unknown).
    pub(crate) fn certificate_valid(&self) -> bool {
        let expiry = self.certificate_expiry.load(Relaxed);
        expiry == 0 || now_ms() / 1000 < expiry
    }

    /// The Prometheus text of everything, with the hub's own figures.
    #[cfg(feature = "metrics")]
    pub(crate) fn render(&self, hub: HubGauges) -> String {
        let mut registry = prometheus_client::registry::Registry::with_prefix("wtchat");
        let snapshot = {
            let connections = self.connections.lock().unwrap();
            let mut sums = Snapshot {
                totals: Totals::default(),
                by_transport: [0; TRANSPORTS.len()],
                queued: 0,
                rooms: hub.rooms,
                members: hub.members,
                certificate_expiry: self.certificate_expiry.load(Relaxed),
                joins: self.joins.load(Relaxed),
                published: self.published.load(Relaxed),
                refused: self.refused.counts(),
                disconnects: self.disconnects.counts(),
                webhook_calls: self.webhook_calls.counts(),
                forwarded: self.forwarded.counts(),
                webhook_events_dropped: self.webhook_events_dropped.load(Relaxed),
                engine_buckets: self.engine.0.buckets.each_ref().map(|b| b.load(Relaxed)),
                engine_sum_ns: self.engine.0.sum_ns.load(Relaxed),
                engine_errors: self.engine.0.errors.load(Relaxed),
            };
            sums.totals.frames = connections.closed.frames;
            sums.totals.bytes = connections.closed.bytes;
            sums.totals.delivered = connections.closed.delivered;
            sums.totals.latency = connections.closed.latency;
            sums.totals.latency_sum_ms = connections.closed.latency_sum_ms;
            for stats in connections.open.values() {
                sums.totals.add(stats);
                let t = TRANSPORTS.iter().position(|t| *t == stats.transport);
                sums.by_transport[t.unwrap_or(0)] += 1;
                sums.queued += stats.queued.load(Relaxed);
            }
            sums
        };
        registry.register_collector(Box::new(snapshot));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Everything at one scrape: the counters, the figures summed over connections, and the
/// hub's.
#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Snapshot {
    totals: Totals,
    by_transport: [u64; TRANSPORTS.len()],
    queued: u64,
    rooms: usize,
    members: usize,
    certificate_expiry: u64,
    joins: u64,
    published: u64,
    refused: Vec<(&'static str, u64)>,
    disconnects: Vec<((u16, &'static str), u64)>,
    webhook_calls: Vec<((&'static str, &'static str), u64)>,
    forwarded: Vec<(&'static str, u64)>,
    webhook_events_dropped: u64,
    engine_buckets: [u64; ENGINE_SECONDS.len() + 1],
    engine_sum_ns: u64,
    engine_errors: u64,
}

#[cfg(feature = "metrics")]
impl prometheus_client::collector::Collector for Snapshot {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::{EncodeMetric, NoLabelSet};
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::registry::Unit;
        let plain = [
            (
                "joins",
                "Room joins accepted (a connection joining a room)",
                self.joins,
            ),
            (
                "messages_published",
                "Messages numbered here for storing and delivery (clients' and the host's)",
                self.published,
            ),
            (
                "engine_errors",
                "Engine writes that failed",
                self.engine_errors,
            ),
            (
                "webhook_events_dropped",
                "Events the events webhook dropped, its queue full (the backend not keeping up)",
                self.webhook_events_dropped,
            ),
        ];
        for (name, help, value) in plain {
            let metric = Counter::<u64>::default();
            metric.inc_by(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let mut family = |name: &str,
                          help: &str,
                          rows: Vec<(Vec<(&'static str, String)>, u64)>|
         -> Result<(), std::fmt::Error> {
            let mut descriptor =
                encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, value) in rows {
                descriptor
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
            }
            Ok(())
        };
        family(
            "frames_refused",
            "Client frames answered with an error frame, by error code",
            self.refused
                .iter()
                .map(|(code, n)| (vec![("code", code.to_string())], *n))
                .collect(),
        )?;
        family(
            "disconnects",
            "Connections closed, by close code (reason \"client\": the client closed or vanished)",
            self.disconnects
                .iter()
                .map(|((code, reason), n)| {
                    (
                        vec![("code", code.to_string()), ("reason", reason.to_string())],
                        *n,
                    )
                })
                .collect(),
        )?;
        family(
            "forwarded_requests",
            "SSE and long-polling requests that reached this node for a session another node holds, sent on to it through the engine",
            self.forwarded
                .iter()
                .map(|(request, n)| (vec![("request", request.to_string())], *n))
                .collect(),
        )?;
        family(
            "webhook_calls",
            "Calls to the host's webhooks, by webhook and outcome",
            self.webhook_calls
                .iter()
                .map(|((webhook, outcome), n)| {
                    (
                        vec![
                            ("webhook", webhook.to_string()),
                            ("outcome", outcome.to_string()),
                        ],
                        *n,
                    )
                })
                .collect(),
        )?;
        let engine_buckets: Vec<(f64, u64)> = ENGINE_SECONDS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(self.engine_buckets)
            .collect();
        encoder
            .encode_descriptor(
                "engine_write_duration",
                "How long the engine took to store a batch (a commit, a pipeline to Redis)",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(
                self.engine_sum_ns as f64 / 1e9,
                self.engine_buckets.iter().sum(),
                &engine_buckets,
                None,
            )?;
        let mut connections = encoder.encode_descriptor(
            "connections",
            "Connections open now, by transport",
            None,
            MetricType::Gauge,
        )?;
        for (transport, n) in TRANSPORTS.iter().zip(self.by_transport) {
            connections
                .encode_family(&[("transport", transport.as_str())])?
                .encode_gauge(&(n as i64))?;
        }
        let counters = [
            (
                "frames_sent",
                "Frames written to clients",
                self.totals.frames,
            ),
            (
                "deliveries",
                "Messages written to clients (one per recipient)",
                self.totals.delivered,
            ),
        ];
        for (name, help, value) in counters {
            let metric = Counter::<u64>::default();
            metric.inc_by(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let bytes = Counter::<u64>::default();
        bytes.inc_by(self.totals.bytes);
        bytes.encode(encoder.encode_descriptor(
            "sent",
            "Bytes of frames written to clients",
            Some(&Unit::Bytes),
            bytes.metric_type(),
        )?)?;
        let gauges = [
            (
                "queued_frames",
                "Frames waiting in connections' queues (as of each one's last write)",
                self.queued as i64,
            ),
            ("rooms", "Rooms held in memory here", self.rooms as i64),
            (
                "members",
                "Members of rooms connected here (one per connection and room)",
                self.members as i64,
            ),
        ];
        for (name, help, value) in gauges {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&value)?;
        }
        if self.certificate_expiry > 0 {
            encoder
                .encode_descriptor(
                    "certificate_expiry_timestamp",
                    "When the TLS certificate expires, seconds since 1970",
                    Some(&Unit::Seconds),
                    MetricType::Gauge,
                )?
                .encode_gauge(&(self.certificate_expiry as i64))?;
        }
        // Per-bucket counts: the encoder accumulates them; f64::MAX is its `+Inf`.
        let buckets: Vec<(f64, u64)> = LATENCY_MS
            .iter()
            .map(|le| *le as f64 / 1000.0)
            .chain([f64::MAX])
            .zip(self.totals.latency)
            .collect();
        encoder
            .encode_descriptor(
                "delivery_latency",
                "Time from a message's publish to its write to a client (the first message of each write; ms resolution)",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(
                self.totals.latency_sum_ms as f64 / 1000.0,
                self.totals.latency.iter().sum(),
                &buckets,
                None,
            )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::StoredMessage;

    #[test]
    fn a_message_frames_time_is_read_where_the_encoder_puts_it() {
        let message = StoredMessage::new(
            7,
            1_700_000_000_123,
            "ann".into(),
            Some("s1".into()),
            r#"look: ","time":1,"#.into(),
        );
        let frame = crate::hub::message_frame("lobby", &message);
        assert!(frame.starts_with(MESSAGE));
        assert_eq!(message_time(&frame), Some(1_700_000_000_123));
    }
}
