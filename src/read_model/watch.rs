//! Read-your-writes without holding a database connection per waiter: one task per process follows
//! the active generation's checkpoint (woken by the projector's NOTIFY, with a slow poll for a missed
//! one) and publishes it on a watch channel; any number of requests wait on that channel for free.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

use super::generations::active_watermark;
use super::PROJECTED_CHANNEL;

/// How often the checkpoint is read when no notification arrives.
const POLL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct CheckpointWatch {
    checkpoint: watch::Receiver<i64>,
}

impl CheckpointWatch {
    /// Starts following the checkpoint on `pool` (one connection for LISTEN, one briefly per change);
    /// the task ends when the last watch is dropped.
    pub fn spawn(pool: PgPool) -> Self {
        let (sender, checkpoint) = watch::channel(-1);
        tokio::spawn(follow(pool, sender));
        CheckpointWatch { checkpoint }
    }

    /// Waits until the active generation has projected `position`; the checkpoint then, or `Err` with
    /// the last one seen when `timeout` passes first.
    pub async fn wait_for(&self, position: i64, timeout: Duration) -> Result<i64, i64> {
        let mut checkpoint = self.checkpoint.clone();
        let reached = match tokio::time::timeout(timeout, checkpoint.wait_for(|&c| c >= position)).await {
            Ok(Ok(reached)) => Some(*reached),
            _ => None,
        };
        reached.ok_or_else(|| (*self.checkpoint.borrow()).max(0))
    }
}

async fn follow(pool: PgPool, sender: watch::Sender<i64>) {
    let mut listener: Option<PgListener> = None;
    while !sender.is_closed() {
        if listener.is_none() {
            listener = match PgListener::connect_with(&pool).await {
                Ok(mut l) => l.listen(PROJECTED_CHANNEL).await.ok().map(|_| l),
                Err(_) => None,
            };
        }
        if let Ok(next) = active_watermark(&pool).await {
            sender.send_if_modified(|c| std::mem::replace(c, next) != next);
        }
        match listener.as_mut() {
            Some(l) => {
                // A notification or the poll's timeout: read again. A broken listener: reconnect.
                if let Ok(Err(_)) = tokio::time::timeout(POLL, l.recv()).await {
                    listener = None;
                }
            }
            None => tokio::time::sleep(POLL).await,
        }
    }
}
