//! Liveness, readiness, metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{ErrorBody, ErrorDetail};
use super::{ApiError, AppState, ProjectorState};
use crate::postgres::MIGRATOR;
use crate::read_model;

/// Failed attempts in a row after which a retrying projector makes the service not ready (one or two
/// are a restart of the database or a lost race, and cure themselves).
const UNREADY_AFTER_ATTEMPTS: u32 = 3;

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Liveness {
    status: &'static str,
}

/// Readiness, with each check's state (`ok`, or why not).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    status: &'static str,
    checks: Checks,
    /// When not ready: the same error object as every other refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Checks {
    database: String,
    model: String,
    /// `running`, `starting`, `external` (`--no-projector`), or why it is not keeping up.
    projector: String,
}

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "Up", body = Liveness)))]
pub async fn healthz() -> Json<Liveness> {
    Json(Liveness { status: "ok" })
}

/// Ready for every endpoint: the database answers, its migrations are this build's, the model is
/// loaded and the in-process projector (if any) has not failed.
#[utoipa::path(get, path = "/readyz", security(()), responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "Not ready; `checks` says why", body = Readiness),
))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let databases = state.databases();
    let database = match databases.is_split() {
        false => migrated(databases.log()).await,
        true => match (migrated(databases.log()).await, migrated(databases.read_model()).await) {
            (Ok(_), Ok(_)) => Ok("ok".to_owned()),
            (Err(e), _) => Err(format!("the log's database: {e}")),
            (_, Err(e)) => Err(format!("the read model's database: {e}")),
        },
    };
    let model = match state.inner.queries.get() {
        Some(_) => Ok("ok".to_owned()),
        None => Err("still loading".to_owned()),
    };
    let projector = match state.projector() {
        ProjectorState::External => Ok("external".to_owned()),
        ProjectorState::Starting => Ok("starting".to_owned()),
        // A projector that keeps failing at one position is not keeping the read model current.
        ProjectorState::Running(stats) => match stats.retrying() {
            Some(r) if r.attempts >= UNREADY_AFTER_ATTEMPTS => Err(format!(
                "retrying at position {} since {} ({} failed attempts): {}",
                r.position, r.since, r.attempts, r.error
            )),
            _ => Ok("running".to_owned()),
        },
        ProjectorState::Failed(e) => Err(format!("stopped: {e}")),
    };
    let ready = database.is_ok() && model.is_ok() && projector.is_ok();
    let show = |r: Result<String, String>| r.unwrap_or_else(|e| e);
    let failing: Vec<String> = [("database", &database), ("model", &model), ("projector", &projector)]
        .into_iter()
        .filter_map(|(name, check)| check.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        checks: Checks {
            database: show(database),
            model: show(model),
            projector: show(projector),
        },
        error: (!ready).then(|| ErrorDetail {
            code: "not_ready",
            message: format!("not ready: {}", failing.join("; ")),
        }),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Whether the database answers and has this build's migrations.
async fn migrated(pool: &sqlx::PgPool) -> Result<String, String> {
    let latest = MIGRATOR.iter().map(|m| m.version).max();
    match sqlx::query_scalar::<_, Option<i64>>("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
    {
        Ok(applied) if applied == latest => Ok("ok".to_owned()),
        Ok(applied) => Err(format!(
            "migrations applied up to {applied:?}, but this build has {latest:?}; restart recall to migrate"
        )),
        Err(e) => Err(format!("unreachable: {e}")),
    }
}

/// The Prometheus text exposition: this process's counters and histograms, then the read model's
/// lag and parked failures as the database reports them.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Prometheus text-format metrics", body = String, content_type = "text/plain"),
    (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let stats = match state.projector() {
        ProjectorState::Running(stats) => Some(stats),
        _ => None,
    };
    let mut text = state.metrics().render(stats.as_deref(), state.foreground().yielded());
    text.push_str(&super::metrics::render_append_paths(
        state.handler().store().append_paths(),
    ));
    text.push_str(&super::metrics::render_command_stages(
        state.handler().store().command_timings(),
    ));
    let report = {
        let _turn = state.read_turn().await?;
        read_model::status(state.databases()).await?
    };
    text.push_str(&report.to_prometheus());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
