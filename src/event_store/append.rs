//! Appending. One transaction per call: take the `log_head` row lock (this is what makes positions
//! gapless and commit-ordered), check every stream's expected version, insert all rows with one
//! `UNNEST`, move the head and notify. A request whose expected version does not hold is rejected alone;
//! the others in the same call still go in, each whole.
//!
//! The writer remembers where its last append left the head, so usually it can work the whole append
//! out before touching the database and send it as one call of `append_at_head`, which checks that
//! assumption under the lock (see migrations/0004): one round trip, commit included, instead of five.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::chain::HashInput;
use super::{CommandTimings, EventStore, EventStoreError, ExpectedVersion, NewEvent, NOTIFY_CHANNEL};

/// Events for one stream, with the version the writer expects the stream to be at.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub stream_id: String,
    pub scope: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// Per request, in request order: where it landed, or why it was rejected.
pub type AppendResults = Vec<Result<Appended, AppendRejection>>;

/// Where an accepted request's events landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Position of the request's last event.
    pub position: i64,
    /// Stream version after the request's last event.
    pub version: u64,
    /// True when these event ids were already in the log: a retried append is acknowledged, not duplicated.
    pub already_appended: bool,
}

/// Why one request of a call was not appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream {stream_id} is at version {actual}, but the append expected {expected}")]
pub struct AppendRejection {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub actual: u64,
}

#[derive(Default)]
struct Columns {
    position: Vec<i64>,
    event_id: Vec<Uuid>,
    stream_id: Vec<String>,
    scope: Vec<String>,
    version: Vec<i64>,
    event_type: Vec<String>,
    schema_version: Vec<i32>,
    payload: Vec<String>,
    metadata: Vec<String>,
    causation_id: Vec<Option<Uuid>>,
    correlation_id: Vec<Option<Uuid>>,
    actor: Vec<Option<String>>,
    recorded_at: Vec<DateTime<Utc>>,
    hash: Vec<Vec<u8>>,
}

/// Writes a planned append's rows and moves the head (migrations/0004), under the lock the caller holds.
const INSERT_EVENTS: &str =
    "SELECT insert_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";

impl EventStore {
    /// Appends inside the caller's transaction; nothing is visible until the caller commits, and a
    /// rollback leaves no trace (not even a used-up position).
    pub async fn append_batch_in(
        &self,
        tx: &mut sqlx::PgConnection,
        requests: &[AppendRequest],
    ) -> Result<AppendResults, EventStoreError> {
        Ok(append_in(tx, requests, true).await?.0)
    }
}

/// The log's head as an append left it: the position and hash the next append chains from.
#[derive(Debug, Clone)]
pub(super) struct Tip {
    position: i64,
    hash: Vec<u8>,
}

/// Which way an append went: `fast` in one round trip from the writer's remembered tip, `slow` through
/// the transaction that reads the head and versions under the lock (a first append, or after another
/// writer or a conflict moved things). Counted for `/metrics`.
#[derive(Debug, Default)]
pub struct AppendPaths {
    pub fast: AtomicU64,
    pub slow: AtomicU64,
}

/// Appends the requests in one transaction. With a tip from the writer's previous append, and every
/// stream's version known from the requests' expectations, that is one call of `append_at_head`; when
/// its check under the lock fails (nothing written), or there is no tip, the slow path below. Either way
/// `tip` is left where this append left the head.
pub(super) async fn append_transaction(
    pool: &sqlx::PgPool,
    requests: &[AppendRequest],
    tip: &mut Option<Tip>,
    paths: &AppendPaths,
    timings: &CommandTimings,
) -> Result<AppendResults, EventStoreError> {
    let mut look_up_event_ids = false;
    if let Some(from) = tip.take() {
        match append_at_tip(pool, requests, &from, timings).await {
            Ok(Some((results, after))) => {
                *tip = Some(after);
                paths.fast.fetch_add(1, Ordering::Relaxed);
                return Ok(results);
            }
            Ok(None) => {}
            // A retry of an append that went in: the slow path acknowledges it.
            Err(e) if reuses_an_event_id(&e) => look_up_event_ids = true,
            Err(e) => return Err(e),
        }
    }
    paths.slow.fetch_add(1, Ordering::Relaxed);
    let attempt = |look_up_event_ids| async move {
        let started = Instant::now();
        let mut tx = pool.begin().await.map_err(EventStoreError::classify)?;
        let connected = Instant::now();
        timings.connect.observe(connected - started);
        let (results, after) = append_in(&mut tx, requests, look_up_event_ids).await?;
        let written = Instant::now();
        timings.statement.observe(written - connected);
        tx.commit().await.map_err(EventStoreError::classify)?;
        timings.commit.observe(written.elapsed());
        Ok::<_, EventStoreError>((results, after))
    };
    let (results, after) = match attempt(look_up_event_ids).await {
        Err(e) if !look_up_event_ids && reuses_an_event_id(&e) => attempt(true).await?,
        other => other?,
    };
    *tip = Some(after);
    Ok(results)
}

fn reuses_an_event_id(error: &EventStoreError) -> bool {
    matches!(error, EventStoreError::Database(sqlx::Error::Database(db)) if db.constraint() == Some("events_event_id_key"))
}

/// The fast path: `Ok(None)` when it does not apply (a stream whose version the requests do not pin
/// down, a request the plan would reject, nothing to insert) or when the log is not as `from` says.
async fn append_at_tip(
    pool: &sqlx::PgPool,
    requests: &[AppendRequest],
    from: &Tip,
    timings: &CommandTimings,
) -> Result<Option<(AppendResults, Tip)>, EventStoreError> {
    let mut assumed: HashMap<String, u64> = HashMap::new();
    for request in requests {
        if !assumed.contains_key(&request.stream_id) {
            let version = match request.expected {
                ExpectedVersion::NoStream => 0,
                ExpectedVersion::Exact(v) => v,
                ExpectedVersion::Any | ExpectedVersion::StreamExists => return Ok(None),
            };
            assumed.insert(request.stream_id.clone(), version);
        }
    }
    let (stream_ids, stream_versions): (Vec<String>, Vec<i64>) =
        assumed.iter().map(|(s, &v)| (s.clone(), v as i64)).unzip();
    let plan = plan(requests, from, assumed, &HashMap::new())?;
    if plan.columns.position.is_empty() || plan.results.iter().any(Result::is_err) {
        return Ok(None);
    }
    let Plan {
        results,
        columns,
        after,
    } = plan;
    let query = sqlx::query(
        "SELECT append_at_head($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
         $19, $20, $21)",
    )
    .bind(from.position)
    .bind(&from.hash)
    .bind(stream_ids)
    .bind(stream_versions);
    // The connection is taken first, so that waiting for one and the statement (with its commit) are
    // timed apart.
    let started = Instant::now();
    let mut connection = pool.acquire().await.map_err(EventStoreError::classify)?;
    let connected = Instant::now();
    timings.connect.observe(connected - started);
    let appended: bool = columns
        .bind_to(query)
        .bind(after.position)
        .bind(&after.hash)
        .bind(NOTIFY_CHANNEL)
        .fetch_one(&mut *connection)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(EventStoreError::classify)?;
    timings.statement.observe(connected.elapsed());
    Ok(appended.then_some((results, after)))
}

/// An append worked out in memory: each request's result, the rows to insert, and the head after them.
struct Plan {
    results: AppendResults,
    columns: Columns,
    after: Tip,
}

/// Decides every request against the streams' versions (absent: 0; each accepted request moves its
/// stream for the ones after it) and `stored`, the requests' event ids already in the log (a retry),
/// and computes the accepted events' positions and hash chain from `from`.
fn plan(
    requests: &[AppendRequest],
    from: &Tip,
    mut versions: HashMap<String, u64>,
    stored: &HashMap<Uuid, (String, i64, i64)>,
) -> Result<Plan, EventStoreError> {
    let recorded_at = Utc::now().trunc_subsecs(6);
    let mut position = from.position;
    let mut previous = from.hash.clone();
    let mut columns = Columns::default();
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        if let Some(ack) = acknowledge_retry(request, stored)? {
            results.push(Ok(ack));
            continue;
        }
        let actual = versions.get(&request.stream_id).copied().unwrap_or(0);
        if !request.expected.admits(actual) {
            results.push(Err(AppendRejection {
                stream_id: request.stream_id.clone(),
                expected: request.expected,
                actual,
            }));
            continue;
        }
        let mut version = actual;
        for event in &request.events {
            position += 1;
            version += 1;
            let hash = HashInput {
                position,
                stream_id: &request.stream_id,
                scope: &request.scope,
                version: version as i64,
                event_type: &event.event_type,
                schema_version: event.schema_version,
                event_id: event.event_id,
                causation_id: event.causation_id,
                correlation_id: event.correlation_id,
                actor: event.actor.as_deref(),
                recorded_at_micros: recorded_at.timestamp_micros(),
                payload: &event.payload,
                metadata: &event.metadata,
            }
            .chain(&previous);
            previous = hash.to_vec();
            columns.push(position, version as i64, request, event, recorded_at, previous.clone());
        }
        versions.insert(request.stream_id.clone(), version);
        results.push(Ok(Appended {
            position,
            version,
            already_appended: false,
        }));
    }
    Ok(Plan {
        results,
        columns,
        after: Tip {
            position,
            hash: previous,
        },
    })
}

/// The slow path, inside a transaction: lock the head, read the versions, plan, insert.
async fn append_in(
    tx: &mut sqlx::PgConnection,
    requests: &[AppendRequest],
    look_up_event_ids: bool,
) -> Result<(AppendResults, Tip), EventStoreError> {
    let classify = EventStoreError::classify;
    let (head, last_hash): (i64, Vec<u8>) = sqlx::query_as("SELECT position, last_hash FROM log_head FOR UPDATE")
        .fetch_one(&mut *tx)
        .await
        .map_err(classify)?;

    // Read after the lock is held: this statement's snapshot sees every earlier append.
    let stream_ids: Vec<String> = requests.iter().map(|r| r.stream_id.clone()).collect();
    let versions: HashMap<String, u64> = sqlx::query_as::<_, (String, i64)>(
        // One index probe per stream, whatever the statistics say: with `stream_id = ANY($1)` a generic
        // plan may scan the whole log once per array element.
        "SELECT s.id, v.version FROM unnest($1::text[]) AS s(id)
     CROSS JOIN LATERAL (SELECT max(version) AS version FROM events e WHERE e.stream_id = s.id) v
     WHERE v.version IS NOT NULL",
    )
    .bind(&stream_ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(classify)?
    .into_iter()
    .map(|(s, v)| (s, v as u64))
    .collect();

    let stored = if look_up_event_ids {
        let ids: Vec<Uuid> = requests
            .iter()
            .flat_map(|r| r.events.iter().map(|e| e.event_id))
            .collect();
        stored_event_ids(tx, &ids).await?
    } else {
        HashMap::new()
    };

    let from = Tip {
        position: head,
        hash: last_hash,
    };
    let Plan {
        mut results,
        columns,
        after,
    } = plan(requests, &from, versions, &stored)?;

    // A retry whose expected version no longer holds (it already moved the stream) is still a retry.
    let rejected: Vec<usize> = (0..results.len()).filter(|&i| results[i].is_err()).collect();
    if !look_up_event_ids && !rejected.is_empty() {
        let ids: Vec<Uuid> = rejected
            .iter()
            .flat_map(|&i| requests[i].events.iter().map(|e| e.event_id))
            .collect();
        let stored = stored_event_ids(tx, &ids).await?;
        for i in rejected {
            if let Some(ack) = acknowledge_retry(&requests[i], &stored)? {
                results[i] = Ok(ack);
            }
        }
    }

    if after.position > head {
        columns
            .bind_to(sqlx::query(INSERT_EVENTS))
            .bind(after.position)
            .bind(&after.hash)
            .bind(NOTIFY_CHANNEL)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
    }
    Ok((results, after))
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

impl Columns {
    /// Binds the 14 columns, in table order, as the query's next parameters.
    fn bind_to(self, query: Query<'_>) -> Query<'_> {
        query
            .bind(self.position)
            .bind(self.event_id)
            .bind(self.stream_id)
            .bind(self.scope)
            .bind(self.version)
            .bind(self.event_type)
            .bind(self.schema_version)
            .bind(self.payload)
            .bind(self.metadata)
            .bind(self.causation_id)
            .bind(self.correlation_id)
            .bind(self.actor)
            .bind(self.recorded_at)
            .bind(self.hash)
    }

    fn push(
        &mut self,
        position: i64,
        version: i64,
        request: &AppendRequest,
        event: &NewEvent,
        recorded_at: DateTime<Utc>,
        hash: Vec<u8>,
    ) {
        self.position.push(position);
        self.event_id.push(event.event_id);
        self.stream_id.push(request.stream_id.clone());
        self.scope.push(request.scope.clone());
        self.version.push(version);
        self.event_type.push(event.event_type.clone());
        self.schema_version.push(event.schema_version);
        self.payload.push(event.payload.clone());
        self.metadata.push(event.metadata.clone());
        self.causation_id.push(event.causation_id);
        self.correlation_id.push(event.correlation_id);
        self.actor.push(event.actor.clone());
        self.recorded_at.push(recorded_at);
        self.hash.push(hash);
    }
}

async fn stored_event_ids(
    tx: &mut sqlx::PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, (String, i64, i64)>, EventStoreError> {
    Ok(sqlx::query_as::<_, (Uuid, String, i64, i64)>(
        "SELECT e.event_id, e.stream_id, e.position, e.version FROM unnest($1::uuid[]) AS i(id)
         JOIN LATERAL (SELECT * FROM events WHERE event_id = i.id) e ON true",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(EventStoreError::classify)?
    .into_iter()
    .map(|(id, s, p, v)| (id, (s, p, v)))
    .collect())
}

/// A request whose event ids are all stored already is a retry of an acknowledged append.
fn acknowledge_retry(
    request: &AppendRequest,
    stored: &HashMap<Uuid, (String, i64, i64)>,
) -> Result<Option<Appended>, EventStoreError> {
    let found: Vec<_> = request
        .events
        .iter()
        .filter_map(|e| stored.get(&e.event_id).map(|s| (e, s)))
        .collect();
    if found.is_empty() {
        return Ok(None);
    }
    if let Some((event, (stream, _, _))) = found
        .iter()
        .find(|(_, (stream, _, _))| *stream != request.stream_id)
        .or(if found.len() != request.events.len() {
            found.first()
        } else {
            None
        })
    {
        return Err(EventStoreError::EventIdReused {
            event_id: event.event_id,
            stream_id: stream.clone(),
        });
    }
    let (_, (_, position, version)) = found.iter().max_by_key(|(_, (_, p, _))| *p).expect("non-empty");
    Ok(Some(Appended {
        position: *position,
        version: *version as u64,
        already_appended: true,
    }))
}
