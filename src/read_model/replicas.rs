//! Where a read goes: a streaming replica of the read model when there is one that can answer, else the
//! primary. Replicas take turns; one that fails to connect is left out for a while; a read that must see
//! a position (`wait_for`) goes to a replica that has replayed it, waiting a little for one to, and to the
//! primary if none has. Whatever answers, the receipt is the watermark read in that server's snapshot,
//! so a replica's answer is exact for the position it names.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::postgres::Databases;

use super::generations::active_watermark;

/// How long a replica that failed is left out before it is tried again.
const LEFT_OUT_FOR: Duration = Duration::from_secs(5);

/// How long a read that needs a position waits for a replica to replay it before asking the primary.
/// Replication lag is milliseconds when all is well; past this, the replica is the slow one.
pub const DEFAULT_REPLICA_PATIENCE: Duration = Duration::from_millis(250);

/// Which server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadSource {
    Primary,
    Replica(usize),
}

struct Replica {
    pool: PgPool,
    left_out_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn left_out(&self) -> bool {
        let mut until = self.left_out_until.lock().unwrap_or_else(|p| p.into_inner());
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }
}

#[derive(Clone)]
pub struct Readers {
    primary: PgPool,
    replicas: Arc<[Replica]>,
    next: Arc<AtomicUsize>,
    patience: Duration,
}

impl Readers {
    /// Reads over `databases`' read model and its replicas (`RECALL_REPLICA_PATIENCE_MS` sets how long a
    /// read waits for a replica to reach its position).
    pub fn new(databases: &Databases) -> Self {
        let patience = std::env::var("RECALL_REPLICA_PATIENCE_MS")
            .ok()
            .and_then(|ms| ms.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_REPLICA_PATIENCE);
        Readers {
            primary: databases.read_model().clone(),
            replicas: databases
                .replicas()
                .iter()
                .map(|pool| Replica {
                    pool: pool.clone(),
                    left_out_until: Mutex::new(None),
                })
                .collect(),
            next: Arc::default(),
            patience,
        }
    }

    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// A server to read from, with what it is. With `at_least`, one whose watermark has reached it
    /// (the primary's has, when the caller waited for it there).
    pub async fn pick(&self, at_least: Option<i64>) -> (&PgPool, ReadSource) {
        if self.replicas.is_empty() {
            return (&self.primary, ReadSource::Primary);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.patience;
        let mut pause = Duration::from_millis(2);
        loop {
            for k in 0..self.replicas.len() {
                let i = (start + k) % self.replicas.len();
                let replica = &self.replicas[i];
                if replica.left_out() {
                    continue;
                }
                let Some(position) = at_least else {
                    return (&replica.pool, ReadSource::Replica(i));
                };
                match active_watermark(&replica.pool).await {
                    Ok(w) if w >= position => return (&replica.pool, ReadSource::Replica(i)),
                    Ok(_) => {}
                    Err(e) => self.failed(ReadSource::Replica(i), &e),
                }
            }
            if at_least.is_none() || Instant::now() + pause > deadline {
                return (&self.primary, ReadSource::Primary);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(25));
        }
    }

    /// Runs `read` on a server [`Readers::pick`] chooses. Should it fail on a replica, the primary reads
    /// instead, and the replica is left out for a while if it cannot be reached (`database_error` finds
    /// the database's error in `E`).
    pub async fn read<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
        &self,
        at_least: Option<i64>,
        read: impl Fn(PgPool) -> F,
        database_error: fn(&E) -> Option<&sqlx::Error>,
    ) -> Result<(T, ReadSource), E> {
        let (pool, source) = self.pick(at_least).await;
        match read(pool.clone()).await {
            Ok(value) => Ok((value, source)),
            Err(e) if source != ReadSource::Primary => {
                if let Some(error) = database_error(&e) {
                    self.failed(source, error);
                }
                tracing::debug!(error = %e, ?source, "a replica could not answer; asking the primary");
                Ok((read(self.primary.clone()).await?, ReadSource::Primary))
            }
            Err(e) => Err(e),
        }
    }

    /// A read on `source` failed: a replica that cannot be reached is left out for a while.
    fn failed(&self, source: ReadSource, error: &sqlx::Error) {
        if let ReadSource::Replica(i) = source {
            if crate::postgres::is_unavailable(error) {
                tracing::warn!(replica = i, %error, "a read replica cannot be reached; reading elsewhere for now");
                *self.replicas[i]
                    .left_out_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + LEFT_OUT_FOR);
            }
        }
    }
}
