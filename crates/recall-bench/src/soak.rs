//! `recall-bench soak`: a bounded soak of an in-process `recall serve` on loopback. Concurrent clients
//! add, update, remove and search for a set time, then stop; the run checks that every acknowledged
//! command is in the log and the read model, counts errors by kind, and samples memory and projector lag.

use recall::postgres::Databases;
use recall::read_model;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;

use recall::embed::Embedder;
use recall::event_store::EventStore;
use recall::projector::ProjectorError;
use recall::runtime::{CpuPolicy, Priority};
use recall::server::{self, Model, ServerConfig};

use crate::measure::{BenchError, Latency};

#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub clients: usize,
    pub duration: Duration,
    pub threads: usize,
    /// Scheduling of the query pool's threads.
    pub query_priority: Priority,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakReport {
    pub clients: usize,
    pub seconds: f64,
    pub requests: u64,
    pub requests_per_s: f64,
    pub add: Latency,
    pub update: Latency,
    pub remove: Latency,
    pub search: Latency,
    /// Deliberate back-pressure (503 with Retry-After).
    pub unavailable: u64,
    /// Any other 5xx: must be 0.
    pub server_errors: u64,
    /// 4xx answers: must be 0 (each client only touches its own documents, with the right versions).
    pub client_errors: u64,
    pub transport_errors: u64,
    /// Acknowledged commands whose effect is missing from the log or the read model: must be 0.
    pub lost: u64,
    pub documents: usize,
    pub peak_rss_mib: f64,
    /// Resident memory at one third and at the end of the run, to see it level off.
    pub rss_third_mib: f64,
    pub rss_end_mib: f64,
    pub max_lag_events: i64,
    /// How long the projector took to catch up after the clients stopped.
    pub drain_seconds: f64,
}

/// What a client was told about one of its documents: the version and whether it is removed.
type Acknowledged = HashMap<String, (u64, bool)>;

#[derive(Default)]
struct Tally {
    add: Vec<Duration>,
    update: Vec<Duration>,
    remove: Vec<Duration>,
    search: Vec<Duration>,
    unavailable: u64,
    server_errors: u64,
    client_errors: u64,
    transport_errors: u64,
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// One client's loop: mostly adds, then updates and removals of its own documents, and searches.
fn client(base: String, id: usize, deadline: Instant, stop: Arc<AtomicBool>) -> (Tally, Acknowledged) {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
    let mut rng = rand::thread_rng();
    let (mut tally, mut docs) = (Tally::default(), Acknowledged::new());
    let mut live: Vec<String> = Vec::new();
    let mut n = 0;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let roll: f64 = rng.gen();
        let started = Instant::now();
        let (kind, result, doc) = if roll < 0.2 {
            let body = json!({"query": format!("note {} about topic {}", rng.gen_range(0..1000), rng.gen_range(0..50)), "k": 10});
            ("search", agent.post(&format!("{base}/v1/search")).send_json(body), None)
        } else if roll < 0.35 && !live.is_empty() {
            let doc = live[rng.gen_range(0..live.len())].clone();
            let version = docs[&doc].0;
            let body = json!({"text": format!("Client {id} rewrote {doc} at version {version}: topic {}.", rng.gen_range(0..50))});
            let request = agent
                .put(&format!("{base}/v1/documents/{doc}?scope=soak"))
                .set("If-Match", &version.to_string());
            ("update", request.send_json(body), Some(doc))
        } else if roll < 0.42 && !live.is_empty() {
            let doc = live.swap_remove(rng.gen_range(0..live.len()));
            let version = docs[&doc].0;
            let request = agent
                .delete(&format!("{base}/v1/documents/{doc}?scope=soak"))
                .set("If-Match", &version.to_string());
            ("remove", request.call(), Some(doc))
        } else {
            n += 1;
            let doc = format!("c{id}-{n}");
            let body = json!({"id": doc, "scope": "soak", "title": format!("Note {n} of client {id}"),
                              "text": format!("Client {id} wrote note {n} about topic {}. {}", rng.gen_range(0..50),
                                              "It carries a paragraph of ordinary text so that it embeds like a real note. ".repeat(rng.gen_range(1..6)))});
            (
                "add",
                agent.post(&format!("{base}/v1/documents")).send_json(body),
                Some(doc),
            )
        };
        let elapsed = started.elapsed();
        match result {
            Ok(response) => {
                if let Some(doc) = doc {
                    let answer: serde_json::Value = response.into_json().unwrap_or_default();
                    let version = answer["version"].as_u64().unwrap_or(0);
                    match kind {
                        "add" => {
                            live.push(doc.clone());
                            docs.insert(doc, (version, false));
                        }
                        "update" => {
                            docs.insert(doc, (version, false));
                        }
                        _ => {
                            docs.insert(doc, (version, true));
                        }
                    }
                }
                match kind {
                    "add" => tally.add.push(elapsed),
                    "update" => tally.update.push(elapsed),
                    "remove" => tally.remove.push(elapsed),
                    _ => tally.search.push(elapsed),
                }
            }
            Err(ureq::Error::Status(503, _)) => {
                tally.unavailable += 1;
                // A removal that was refused leaves the document live.
                if let (Some(doc), "remove") = (doc, kind) {
                    live.push(doc);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(ureq::Error::Status(status, response)) => {
                let body = response.into_string().unwrap_or_default();
                tracing::warn!(status, %body, kind, "soak request failed");
                if status >= 500 {
                    tally.server_errors += 1;
                } else {
                    tally.client_errors += 1;
                }
            }
            Err(error) => {
                tracing::warn!(%error, kind, "soak transport error");
                tally.transport_errors += 1;
            }
        }
    }
    (tally, docs)
}

pub async fn run_soak(
    databases: Databases,
    embedder: Arc<Embedder>,
    config: SoakConfig,
) -> Result<SoakReport, BenchError> {
    let store = EventStore::new(databases.log().clone());
    // The service as `recall serve` runs it, on a free loopback port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Http(e.to_string()))?;
    let mut server = server::start(
        ServerConfig {
            cpu: CpuPolicy::beside_api(config.threads, config.query_priority),
            ..ServerConfig::default()
        },
        databases.clone(),
        Some(listener),
        Model::Loaded(embedder),
    )
    .await?;
    server.ready().await?;
    let base = format!("http://{}", server.address().expect("listening"));

    let started = Instant::now();
    let deadline = started + config.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(f64, f64, i64)>>> = Arc::default();
    let sampler = {
        let (samples, databases, stop) = (samples.clone(), databases.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let lag = read_model::status(&databases)
                    .await
                    .ok()
                    .and_then(|r| r.active().map(|p| p.lag_events))
                    .unwrap_or(0);
                samples
                    .lock()
                    .expect("samples")
                    .push((started.elapsed().as_secs_f64(), rss_mib(), lag));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let clients: Vec<_> = (0..config.clients)
        .map(|id| {
            let (base, stop) = (base.clone(), stop.clone());
            tokio::task::spawn_blocking(move || client(base, id, deadline, stop))
        })
        .collect();
    let mut tally = Tally::default();
    let mut acknowledged = Acknowledged::new();
    for c in clients {
        let (t, docs) = c.await.map_err(|e| BenchError::Http(e.to_string()))?;
        tally.add.extend(t.add);
        tally.update.extend(t.update);
        tally.remove.extend(t.remove);
        tally.search.extend(t.search);
        tally.unavailable += t.unavailable;
        tally.server_errors += t.server_errors;
        tally.client_errors += t.client_errors;
        tally.transport_errors += t.transport_errors;
        acknowledged.extend(docs);
    }
    let seconds = started.elapsed().as_secs_f64();

    // Let the projector drain, then check every acknowledged command against the log and the read model.
    let drain = Instant::now();
    let head = store.head().await.map_err(ProjectorError::from)?;
    read_model::wait_for(databases.read_model(), head, Duration::from_secs(1800)).await?;
    let drain_seconds = drain.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    server.shutdown().await?;
    let rows: Vec<(String, i64, bool)> =
        sqlx::query_as("SELECT d.id, d.version, d.removed FROM documents d JOIN projections p USING (generation) WHERE p.status = $1 AND d.scope = 'soak'")
            .bind(read_model::GenerationStatus::Active.as_str())
            .fetch_all(databases.read_model())
            .await?;
    let projected: HashMap<String, (u64, bool)> = rows.into_iter().map(|(id, v, r)| (id, (v as u64, r))).collect();
    let logged: HashMap<String, u64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT stream_id, max(version) FROM events WHERE scope = 'soak' GROUP BY stream_id",
    )
    .fetch_all(databases.log())
    .await?
    .into_iter()
    .map(|(s, v)| (s.split_once(':').map_or(s.clone(), |(_, id)| id.to_owned()), v as u64))
    .collect();
    let lost = acknowledged
        .iter()
        .filter(|(id, (version, removed))| {
            logged.get(*id) != Some(version) || projected.get(*id) != Some(&(*version, *removed))
        })
        .count() as u64;

    let samples = samples.lock().expect("samples").clone();
    let at = |fraction: f64| {
        samples
            .iter()
            .find(|(t, _, _)| *t >= seconds * fraction)
            .or(samples.last())
            .map_or(0.0, |s| s.1)
    };
    let requests = (tally.add.len() + tally.update.len() + tally.remove.len() + tally.search.len()) as u64;
    Ok(SoakReport {
        clients: config.clients,
        seconds,
        requests,
        requests_per_s: requests as f64 / seconds,
        add: Latency::from_samples(tally.add),
        update: Latency::from_samples(tally.update),
        remove: Latency::from_samples(tally.remove),
        search: Latency::from_samples(tally.search),
        unavailable: tally.unavailable,
        server_errors: tally.server_errors,
        client_errors: tally.client_errors,
        transport_errors: tally.transport_errors,
        lost,
        documents: acknowledged.len(),
        peak_rss_mib: samples.iter().map(|s| s.1).fold(0.0, f64::max),
        rss_third_mib: at(1.0 / 3.0),
        rss_end_mib: at(1.0),
        max_lag_events: samples.iter().map(|s| s.2).max().unwrap_or(0),
        drain_seconds,
    })
}
