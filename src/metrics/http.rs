//! The optional HTTP listener (`--metrics ADDRESS:PORT`): `GET /metrics` in
//! Prometheus's text format, `GET /status` as JSON (what the console's
//! `status`, `rooms`, `users` and `locks` show).
//!
//! It runs on a thread of its own with its own small runtime, so a scrape
//! never runs on the core's thread: it asks the core for a [`Report`]
//! through the console's request channel, as the console does.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Metrics;
use crate::core::{ConsoleRequest, Report};
use crate::protocol::PROTOCOL_VERSION;

/// How long a scrape waits for the core.
const CORE_DEADLINE: Duration = Duration::from_secs(5);
/// The content type of Prometheus's text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for metrics on {addr}: {source}; choose another --metrics ADDRESS:PORT")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the metrics listener: {0}")]
    Start(#[from] std::io::Error),
}

/// Binds the listener now, so that a port in use stops the server at start.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    let listener = TcpListener::bind(addr).map_err(|source| HttpError::Bind { addr, source })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

struct Shared {
    metrics: Arc<Metrics>,
    core: mpsc::Sender<ConsoleRequest>,
    /// One scrape at a time sets the gauges and writes them out.
    scrape: Mutex<()>,
}

/// Serves `listener` on a thread of its own until `shutdown` is cancelled.
pub fn spawn(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    core: mpsc::Sender<ConsoleRequest>,
    shutdown: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, HttpError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let shared = Arc::new(Shared {
        metrics,
        core,
        scrape: Mutex::new(()),
    });
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/status", get(status_json))
        .with_state(shared);
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("the metrics listener stopped: {e}");
                        return;
                    }
                };
                // Not a graceful shutdown: that would wait for a scraper's
                // kept-alive connection to close, and hold the server's
                // exit with it. Leaving `block_on` drops every connection.
                let serving = std::future::IntoFuture::into_future(axum::serve(listener, app));
                tokio::select! {
                    served = serving => {
                        if let Err(e) = served {
                            tracing::error!("the metrics listener stopped: {e}");
                        }
                    }
                    () = shutdown.cancelled() => {}
                }
            });
        })?;
    Ok(thread)
}

/// The core's report, unless it does not answer in time (shutting down).
async fn ask(core: &mpsc::Sender<ConsoleRequest>, locks: bool) -> Option<Report> {
    let (reply, answer) = oneshot::channel();
    let asked = async {
        core.send(ConsoleRequest::Report { locks, reply })
            .await
            .ok()?;
        answer.await.ok()
    };
    tokio::time::timeout(CORE_DEADLINE, asked)
        .await
        .ok()
        .flatten()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the server is not answering (shutting down?)\n",
    )
        .into_response()
}

async fn metrics_text(State(shared): State<Arc<Shared>>) -> Response {
    let Some(report) = ask(&shared.core, false).await else {
        return unavailable();
    };
    let _one_at_a_time = shared.scrape.lock().await;
    shared.metrics.describe(&report);
    match shared.metrics.text() {
        Ok(text) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response(),
        Err(e) => {
            tracing::error!("{e}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

async fn status_json(State(shared): State<Arc<Shared>>) -> Response {
    match ask(&shared.core, true).await {
        Some(report) => axum::Json(Status::from(report)).into_response(),
        None => unavailable(),
    }
}

/// The JSON `/status` answers.
#[derive(Serialize)]
struct Status {
    server_version: &'static str,
    protocol_version: u32,
    uptime_seconds: u64,
    rooms: Vec<RoomStatus>,
    users: Vec<UserStatus>,
    locks: Vec<LockStatus>,
}

#[derive(Serialize)]
struct RoomStatus {
    name: String,
    state: String,
    users: u64,
    datablocks: u64,
    bytes: u64,
    keep_open: bool,
    private: bool,
}

#[derive(Serialize)]
struct UserStatus {
    room: String,
    name: String,
    admin: bool,
    status: String,
    latency_ms: Option<f64>,
}

#[derive(Serialize)]
struct LockStatus {
    room: String,
    user: String,
    datablock: String,
    type_id: String,
    /// RFC 3339, UTC.
    since: String,
    held_seconds: u64,
}

impl From<Report> for Status {
    fn from(report: Report) -> Self {
        let now = SystemTime::now();
        Self {
            server_version: env!("CARGO_PKG_VERSION"),
            protocol_version: PROTOCOL_VERSION,
            uptime_seconds: report.uptime.as_secs(),
            rooms: report
                .rooms
                .into_iter()
                .map(|r| RoomStatus {
                    name: r.name,
                    state: r.state.to_string(),
                    users: r.users_online,
                    datablocks: r.datablocks,
                    bytes: r.bytes,
                    keep_open: r.keep_open,
                    private: r.private,
                })
                .collect(),
            users: report
                .users
                .into_iter()
                .map(|(room, u)| UserStatus {
                    room,
                    name: u.name,
                    admin: u.admin,
                    status: u.status.to_string(),
                    latency_ms: u.latency_ms,
                })
                .collect(),
            locks: report
                .locks
                .into_iter()
                .map(|l| LockStatus {
                    since: humantime::format_rfc3339_seconds(l.since).to_string(),
                    held_seconds: now.duration_since(l.since).unwrap_or_default().as_secs(),
                    room: l.room,
                    user: l.user,
                    datablock: l.uuid,
                    type_id: l.type_id,
                })
                .collect(),
        }
    }
}
