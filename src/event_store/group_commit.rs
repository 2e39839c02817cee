//! Group commit. Appends take one row lock and end with a flushed commit, so one transaction per command
//! would cap throughput at one fsync per event however many clients write. Instead every `append_batch`
//! call goes to a single writer task, which takes whatever calls are waiting and appends them together in
//! one transaction: one fsync for the group, and each call still gets its own per-request results.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::append::{append_transaction, AppendPaths, AppendRejection, AppendResults, Appended};
use super::{AppendRequest, CommandTimings, EventStore, EventStoreError};

/// Most requests joined into one transaction.
const MAX_GROUP_REQUESTS: usize = 2000;

/// Calls queued for the writer at most; a caller past it waits for room (and its own deadline).
const MAX_QUEUED_CALLS: usize = 4096;

pub(super) struct Job {
    pub requests: Vec<AppendRequest>,
    pub queued_at: Instant,
    pub reply: oneshot::Sender<Result<AppendResults, EventStoreError>>,
}

pub(super) fn spawn_writer(
    pool: sqlx::PgPool,
    paths: Arc<AppendPaths>,
    timings: Arc<CommandTimings>,
) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel(MAX_QUEUED_CALLS);
    tokio::spawn(writer(pool, rx, paths, timings));
    tx
}

impl EventStore {
    /// Appends one stream's events; a version mismatch is `Ok(Err(rejection))`.
    pub async fn append(&self, request: AppendRequest) -> Result<Result<Appended, AppendRejection>, EventStoreError> {
        let mut results = self.append_batch(vec![request]).await?;
        Ok(results.pop().expect("one result per request"))
    }

    /// Appends many streams' events in one transaction, in order; each request is accepted or rejected
    /// whole. Concurrent calls are committed together by the writer task.
    #[tracing::instrument(skip_all, fields(requests = requests.len()))]
    pub async fn append_batch(&self, requests: Vec<AppendRequest>) -> Result<AppendResults, EventStoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Job {
                requests,
                queued_at: Instant::now(),
                reply,
            })
            .await
            .map_err(|_| EventStoreError::WriterGone)?;
        answer.await.map_err(|_| EventStoreError::WriterGone)?
    }
}

async fn writer(
    pool: sqlx::PgPool,
    mut rx: mpsc::Receiver<Job>,
    paths: Arc<AppendPaths>,
    timings: Arc<CommandTimings>,
) {
    // Where this writer's last append left the log; all its appends go through here, in order.
    let mut tip = None;
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut requests = jobs[0].requests.len();
        while requests < MAX_GROUP_REQUESTS {
            match rx.try_recv() {
                Ok(job) => {
                    requests += job.requests.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let taken = Instant::now();
        for job in &jobs {
            timings.queue.observe(taken.saturating_duration_since(job.queued_at));
        }
        if jobs.len() == 1 {
            let job = jobs.pop().expect("one job");
            let result = append_transaction(&pool, &job.requests, &mut tip, &paths, &timings).await;
            let _ = job.reply.send(result);
            continue;
        }
        let lengths: Vec<usize> = jobs.iter().map(|j| j.requests.len()).collect();
        let combined: Vec<AppendRequest> = jobs.iter_mut().flat_map(|j| std::mem::take(&mut j.requests)).collect();
        match append_transaction(&pool, &combined, &mut tip, &paths, &timings).await {
            Ok(results) => {
                let mut results = results.into_iter();
                for (job, n) in jobs.into_iter().zip(lengths) {
                    let _ = job.reply.send(Ok(results.by_ref().take(n).collect()));
                }
            }
            Err(error) => {
                // Nothing of the group was appended. Run each call alone, so that one caller's problem
                // (say, an event id reused on another stream) reaches that caller only.
                tracing::debug!(%error, calls = jobs.len(), "group append failed; retrying calls one by one");
                let mut combined = combined.into_iter();
                for (job, n) in jobs.into_iter().zip(lengths) {
                    let own: Vec<AppendRequest> = combined.by_ref().take(n).collect();
                    let _ = job
                        .reply
                        .send(append_transaction(&pool, &own, &mut tip, &paths, &timings).await);
                }
            }
        }
    }
}
