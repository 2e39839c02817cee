//! `recall bench ...`: runs a measurement on a scratch database and prints the figures.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use recall::bench::{run_append_bench, AppendBenchConfig};
use recall::commands::CommandHandler;
use recall::event_store::EventStore;
use recall::postgres::{self, DatabaseTarget};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Event-log throughput and latency: one client, many clients, bulk ingest.
    Append {
        #[arg(long, default_value_t = 2000)]
        single: usize,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 250)]
        per_client: usize,
        #[arg(long, default_value_t = 100_000)]
        bulk: usize,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long)]
        json: bool,
    },
}

/// A fresh database beside the user's, so a benchmark never writes into the real log; dropped afterwards.
async fn scratch_database(name: &str) -> anyhow::Result<(sqlx::PgPool, sqlx::postgres::PgConnectOptions)> {
    let admin = postgres::connect_options(&DatabaseTarget::from_env()).await?;
    postgres::create_database_if_missing(&admin, name).await?;
    let pool = postgres::open_with(admin.clone().database(name), 32).await?;
    Ok((pool, admin))
}

async fn drop_database(admin: &sqlx::postgres::PgConnectOptions, name: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(admin).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut conn).await?;
    Ok(())
}

pub async fn run(what: BenchCommand) -> anyhow::Result<ExitCode> {
    match what {
        BenchCommand::Append { single, clients, per_client, bulk, batch, json } => {
            let name = format!("recall_bench_{}", std::process::id());
            let (pool, admin) = scratch_database(&name).await.context("creating the scratch database")?;
            let handler = CommandHandler::new(EventStore::new(pool.clone()));
            let config = AppendBenchConfig { single_commands: single, clients, commands_per_client: per_client, bulk_documents: bulk, bulk_batch: batch };
            let report = run_append_bench(&handler, config).await;
            pool.close().await;
            drop_database(&admin, &name).await?;
            let report = report?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                for r in [&report.one_client, &report.many_clients] {
                    println!(
                        "{:>2} client(s): {:>8.0} events/s  p50 {:.2} ms  p99 {:.2} ms  ({} commands)",
                        r.clients, r.events_per_s, r.latency.p50_ms, r.latency.p99_ms, r.latency.count
                    );
                }
                println!("bulk ingest: {:>8.0} events/s  ({} documents in batches of {})", report.bulk_events_per_s, report.bulk_documents, report.bulk_batch);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
