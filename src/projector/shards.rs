//! Shards and their leases (migrations/0010). PostgreSQL is the coordinator: a worker registers with a
//! heartbeat, holds shards by leases it renews, takes a fair share of them (free or expired ones, under
//! `FOR UPDATE SKIP LOCKED`), and gives back what exceeds its share when others join. A write commits
//! only while its worker still owns every shard it moves (see `write::write_batch`), so a worker whose
//! lease ran out can never overwrite the one that took its shards over.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

/// Who a worker is, for the leases and for `recall status`.
#[derive(Debug, Clone)]
pub(crate) struct Worker {
    pub id: Uuid,
    pub name: String,
    pub device: String,
    pub lease: Duration,
}

impl Worker {
    pub fn new(device: &str, lease: Duration) -> Self {
        let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
        Worker {
            id: Uuid::new_v4(),
            name: format!("{host}:{}", std::process::id()),
            device: device.to_owned(),
            lease,
        }
    }

    fn lease_interval(&self) -> String {
        format!("{} milliseconds", self.lease.as_millis())
    }

    /// Records the worker as alive, serving `generation`.
    pub async fn heartbeat(&self, pool: &PgPool, generation: Option<i64>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO projection_workers (id, generation, name, device) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(),
                 generation = coalesce(EXCLUDED.generation, projection_workers.generation)",
        )
        .bind(self.id)
        .bind(generation)
        .bind(&self.name)
        .bind(&self.device)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Extends every lease this worker holds (a lost one shows at the next write, which it fences).
    pub async fn renew(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        self.heartbeat(pool, None).await?;
        sqlx::query("UPDATE projection_shards SET lease_expires = now() + $2::interval WHERE owner = $1")
            .bind(self.id)
            .bind(self.lease_interval())
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Takes or gives back shards of `generation` towards a fair share, renewing the leases it keeps,
    /// and returns the shards held afterwards, in order. The live workers (heartbeat younger than the
    /// lease) are ranked by id, and each knows its share from its rank alone: the shards divided by the
    /// workers, the first `shards % workers` of them one more. `all` takes every shard that is free or
    /// expired whatever the share (a one-off `step`).
    pub async fn balance(
        &self,
        pool: &PgPool,
        generation: i64,
        shards: i32,
        all: bool,
    ) -> Result<Vec<i32>, sqlx::Error> {
        self.heartbeat(pool, Some(generation)).await?;
        let mut held: Vec<i32> = sqlx::query_scalar(
            "UPDATE projection_shards SET lease_expires = now() + $3::interval
             WHERE generation = $1 AND owner = $2 RETURNING shard",
        )
        .bind(generation)
        .bind(self.id)
        .bind(self.lease_interval())
        .fetch_all(pool)
        .await?;
        held.sort_unstable();
        // Workers that died long ago leave the roll (their leases expired long before).
        sqlx::query("DELETE FROM projection_workers WHERE heartbeat_at < now() - interval '1 day'")
            .execute(pool)
            .await?;
        let live: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM projection_workers
             WHERE generation = $1 AND heartbeat_at > now() - $2::interval ORDER BY id",
        )
        .bind(generation)
        .bind(self.lease_interval())
        .fetch_all(pool)
        .await?;
        let share = if all {
            shards as usize
        } else {
            let rank = live.iter().position(|&id| id == self.id).unwrap_or(0);
            fair_share(shards as usize, live.len().max(1), rank)
        };
        if held.len() > share {
            // Others have joined: what exceeds the share goes back, for them to take.
            let extra = held.split_off(share);
            self.release(pool, generation, &extra).await?;
        } else if held.len() < share {
            let taken: Vec<i32> = sqlx::query_scalar(
                "UPDATE projection_shards SET owner = $2, lease_expires = now() + $4::interval, updated_at = now()
                 WHERE (generation, shard) IN (
                     SELECT generation, shard FROM projection_shards
                     WHERE generation = $1 AND (owner IS NULL OR lease_expires < now()) AND owner IS DISTINCT FROM $2
                     ORDER BY shard LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING shard",
            )
            .bind(generation)
            .bind(self.id)
            .bind((share - held.len()) as i64)
            .bind(self.lease_interval())
            .fetch_all(pool)
            .await?;
            if !taken.is_empty() {
                tracing::info!(generation, shards = ?taken, worker = %self.name, "took shards");
            }
            held.extend(taken);
            held.sort_unstable();
        }
        Ok(held)
    }

    /// Gives shards back (their checkpoints stay), for another worker to take at once.
    pub async fn release(&self, pool: &PgPool, generation: i64, shards: &[i32]) -> Result<(), sqlx::Error> {
        if shards.is_empty() {
            return Ok(());
        }
        tracing::info!(generation, shards = ?shards, worker = %self.name, "giving shards back");
        sqlx::query(
            "UPDATE projection_shards SET owner = NULL, lease_expires = NULL, updated_at = now()
             WHERE generation = $1 AND owner = $2 AND shard = ANY($3)",
        )
        .bind(generation)
        .bind(self.id)
        .bind(shards)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Gives every lease back and leaves the roll of workers (a clean stop).
    pub async fn leave(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE projection_shards SET owner = NULL, lease_expires = NULL WHERE owner = $1")
            .bind(self.id)
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM projection_workers WHERE id = $1")
            .bind(self.id)
            .execute(pool)
            .await?;
        Ok(())
    }
}

/// The shards the worker ranked `rank` of `workers` should hold.
fn fair_share(shards: usize, workers: usize, rank: usize) -> usize {
    shards / workers + usize::from(rank < shards % workers)
}

/// The checkpoints of `held` shards of `generation`, as the array `EventStore::read_shards` takes:
/// one entry per shard, `i64::MAX` for the shards not held.
pub(crate) async fn checkpoints(
    pool: &PgPool,
    generation: i64,
    shards: i32,
    held: &[i32],
) -> Result<Vec<i64>, sqlx::Error> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT shard, checkpoint FROM projection_shards WHERE generation = $1 AND shard = ANY($2)")
            .bind(generation)
            .bind(held)
            .fetch_all(pool)
            .await?;
    let mut all = vec![i64::MAX; shards as usize];
    for (shard, checkpoint) in rows {
        if let Some(c) = all.get_mut(shard as usize) {
            *c = checkpoint;
        }
    }
    Ok(all)
}

/// Where a batch moves the checkpoints of the shards it covers: `from` as they were when it was read,
/// `to` once it is written. Shards not held are `i64::MAX` in both and never written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Advance {
    pub from: Vec<i64>,
    pub to: Vec<i64>,
}

impl Advance {
    /// After a read of up to `limit` events past `from` and up to `head` that returned `events` (their
    /// last at `last`): a full read covers every held shard up to its last event, a short one up to the
    /// head.
    pub fn after_read(from: Vec<i64>, head: i64, read: usize, limit: usize, last: Option<i64>) -> Self {
        let reached = match last {
            Some(last) if read >= limit => last,
            _ => head,
        };
        let to = from
            .iter()
            .map(|&c| if c == i64::MAX { c } else { c.max(reached) })
            .collect();
        Advance { from, to }
    }

    /// The same batch cut to end at `position` (its events after it left for later).
    pub fn cut(&self, position: i64) -> Self {
        let to = self
            .from
            .iter()
            .zip(&self.to)
            .map(|(&from, &to)| {
                if from == i64::MAX {
                    from
                } else {
                    to.min(position).max(from)
                }
            })
            .collect();
        Advance {
            from: self.from.clone(),
            to,
        }
    }

    /// Whether writing it moves any checkpoint.
    pub fn moves(&self) -> bool {
        self.from != self.to
    }

    /// Shard numbers, checkpoints before and after, of the held shards (for the write's UPDATE).
    pub fn rows(&self) -> (Vec<i32>, Vec<i64>, Vec<i64>) {
        let mut rows = (Vec::new(), Vec::new(), Vec::new());
        for (shard, (&from, &to)) in self.from.iter().zip(&self.to).enumerate() {
            if from != i64::MAX {
                rows.0.push(shard as i32);
                rows.1.push(from);
                rows.2.push(to);
            }
        }
        rows
    }

    /// The lowest checkpoint it moves to, among held shards (progress, for stats).
    pub fn low(&self) -> i64 {
        self.to.iter().copied().filter(|&c| c != i64::MAX).min().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::{fair_share, Advance};

    #[test]
    fn fair_shares_add_up_and_differ_by_one_at_most() {
        for shards in 1..40 {
            for workers in 1..12 {
                let shares: Vec<usize> = (0..workers).map(|r| fair_share(shards, workers, r)).collect();
                assert_eq!(shares.iter().sum::<usize>(), shards);
                assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
            }
        }
    }

    const NOT_HELD: i64 = i64::MAX;

    #[test]
    fn a_short_read_reaches_the_head_and_a_full_one_its_last_event() {
        let short = Advance::after_read(vec![3, NOT_HELD, 9], 20, 2, 4, Some(12));
        assert_eq!(short.to, vec![20, NOT_HELD, 20]);
        let full = Advance::after_read(vec![3, NOT_HELD, 9], 20, 4, 4, Some(7));
        // A shard already past the batch's end stays where it was.
        assert_eq!(full.to, vec![7, NOT_HELD, 9]);
        assert_eq!(full.rows(), (vec![0, 2], vec![3, 9], vec![7, 9]));
        assert!(full.moves());
        assert!(!Advance::after_read(vec![20, NOT_HELD], 20, 0, 4, None).moves());
    }

    #[test]
    fn a_cut_batch_ends_before_the_event_it_was_cut_at_but_never_goes_back() {
        let a = Advance::after_read(vec![3, NOT_HELD, 9], 20, 2, 4, Some(12));
        assert_eq!(a.cut(5).to, vec![5, NOT_HELD, 9]);
        assert_eq!(a.cut(30).to, vec![20, NOT_HELD, 20]);
        assert_eq!(a.cut(5).low(), 5);
    }
}
