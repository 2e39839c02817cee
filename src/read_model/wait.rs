//! Read-your-writes for a one-off caller (the CLI, a benchmark): wait on the checkpoint over a
//! connection of its own. The server's many waiters share one follower instead (`CheckpointWatch`).

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;

use super::generations::active_watermark;
use super::{ReadModelError, PROJECTED_CHANNEL};

/// Waits until the active generation has projected `position` (read-your-writes), or times out.
pub async fn wait_for(pool: &PgPool, position: i64, timeout: Duration) -> Result<i64, ReadModelError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(PROJECTED_CHANNEL).await?;
    loop {
        let checkpoint = active_watermark(pool).await?;
        if checkpoint >= position {
            return Ok(checkpoint);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(ReadModelError::WaitTimeout {
                position,
                checkpoint,
                waited: timeout,
            });
        }
        // The notification wakes us at once; the short poll covers a missed one.
        let _ = tokio::time::timeout((deadline - now).min(Duration::from_millis(250)), listener.recv()).await;
    }
}
