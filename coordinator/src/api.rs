//! The HTTP API (docs/control-plane.md): routes, and the mapping of every refusal to a status
//! and a JSON [`ErrorBody`].
//!
//! HTTP/1.1 with JSON bodies, served by axum on a current-thread tokio runtime: the work per
//! request is a SQLite transaction and one ECDSA operation, both run on tokio's blocking pool
//! ([`tokio::task::spawn_blocking`]) so the event loop never waits on the disk, and SQLite
//! serialises writers anyway, so more event-loop threads would buy nothing. TLS is served by
//! the coordinator itself ([`crate::tls`]) or by a terminating proxy in front
//! ([`check_listen`] refuses a non-loopback plain-HTTP address unless the operator says one is
//! there).
//!
//! What a request must show before its body is read, and how much body each route reads
//! (only the result report up to [`MAX_BODY_BYTES`]), is [`intake`]'s; how many connections
//! one client may hold, [`peers`]'s.
//!
//! Every answer that is not 2xx carries an [`ErrorBody`], including the ones axum makes itself
//! (unknown route, wrong method, a body over the limit): [`json_errors`] rewrites them.
//! A failure of the coordinator itself is logged in full and answered with a generic message:
//! database paths and causes are for the operator's log, not for a client.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use bulwark_protocol::control::{
    self, CancelAnswer, ErrorBody, Heartbeat, IdToken, IdTokenRequest, JobRecord, JobState,
    RegisterRequest, RegisterResponse, RekeyRequest, RekeyResponse, ResultReport, SubmitJob,
    Submitted, MAX_BODY_BYTES,
};
use bulwark_protocol::JobSpec;
use serde::de::DeserializeOwned;

use crate::auth::{self, AdminToken, AuthError, RequestTime, SignedHeaders};
use crate::keys::{self, IssuerKey};
use crate::metrics::Metrics;
use crate::oidc::{self, Claims, OidcError};
use crate::outputs::{self, OutputError, OutputStore};
use crate::state::{self, Db, Runner, StateError};

mod intake;
mod live;
mod peers;

use intake::{with_intake, Arrived, BodyBudget, Gate, Intake};
pub use intake::{
    DEFAULT_LARGE_BODY_BUDGET, DEFAULT_LARGE_BODY_SHARE, LARGE_BODY_WAIT, MAX_SMALL_BODY_BYTES,
    MAX_SUBMIT_BODY_BYTES, REFUSED_BODY_DRAIN, SMALL_BODY_TIMEOUT,
};

/// A refusal or failure, as answered.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// A failure of the coordinator: logged with its whole chain, answered generically.
    fn internal(error: &dyn std::error::Error) -> ApiError {
        let mut chain = error.to_string();
        let mut source = error.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error in the coordinator (its log has the cause)",
        )
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> ApiError {
        let status = match &e {
            StateError::RegistrationTokenNotValid
            | StateError::NonceReused
            | StateError::RunnerNotActive { .. } => StatusCode::UNAUTHORIZED,
            StateError::NotLeasedToRunner { .. }
            | StateError::LeaseOver { .. }
            | StateError::Untrusted { .. } => StatusCode::FORBIDDEN,
            // Gone, not a conflict: a runner retrying its result takes `409` for "an earlier
            // attempt arrived", which a result refused as too late is not.
            StateError::LeaseExpired { .. } => StatusCode::GONE,
            StateError::AlreadyFinished { .. }
            | StateError::Ended { .. }
            | StateError::Cancelled { .. } => StatusCode::CONFLICT,
            StateError::NoSuchJob { .. } => StatusCode::NOT_FOUND,
            _ => return ApiError::internal(&e),
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        match e {
            AuthError::State(s) => s.into(),
            AuthError::Random
            | AuthError::StoredKey { .. }
            | AuthError::AdminTokenTooShort { .. } => ApiError::internal(&e),
            _ => ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()),
        }
    }
}

impl From<OidcError> for ApiError {
    fn from(e: OidcError) -> ApiError {
        match e {
            OidcError::Audience => ApiError::bad_request(e.to_string()),
            _ => ApiError::internal(&e),
        }
    }
}

impl From<OutputError> for ApiError {
    fn from(e: OutputError) -> ApiError {
        let status = match &e {
            // The file system's own ENOSPC names a path in the state directory: logged only.
            OutputError::Io { .. } if e.is_storage_full() => {
                ApiError::internal(&e);
                return ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "the coordinator's output store is full (its log has the cause)",
                );
            }
            _ if e.is_storage_full() => StatusCode::INSUFFICIENT_STORAGE,
            OutputError::TooLarge { .. }
            | OutputError::TooManyFiles { .. }
            | OutputError::LiveLogFull { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            OutputError::LiveLogGap { .. } => StatusCode::CONFLICT,
            OutputError::Receiving { .. } => StatusCode::SERVICE_UNAVAILABLE,
            OutputError::JobId(_)
            | OutputError::Sha256(_)
            | OutputError::Length { .. }
            | OutputError::Digest { .. } => StatusCode::BAD_REQUEST,
            OutputError::DiskFull { .. } | OutputError::Io { .. } => return ApiError::internal(&e),
        };
        ApiError::new(status, e.to_string())
    }
}

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A non-loopback listen address without `--behind-tls-proxy` or TLS of its own.
    #[error("listen address {addr}: refused: not a loopback address, and the coordinator would serve plain HTTP; give it a certificate (--tls-cert and --tls-key), or put a TLS terminator in front and pass --behind-tls-proxy, or listen on 127.0.0.1")]
    NotLoopback {
        /// The address.
        addr: SocketAddr,
    },
}

/// Refuses to listen on a non-loopback address unless the coordinator serves TLS itself or a
/// TLS proxy is said to be in front (`tls`: either).
pub fn check_listen(addr: SocketAddr, tls: bool) -> Result<(), ServeError> {
    if addr.ip().is_loopback() || tls {
        Ok(())
    } else {
        Err(ServeError::NotLoopback { addr })
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct Coordinator {
    db: Mutex<Db>,
    /// Runners' public keys, so signatures are checked off the database lock.
    runner_keys: auth::RunnerKeys,
    key: IssuerKey,
    admin: AdminToken,
    issuer: String,
    jwks: serde_json::Value,
    discovery: serde_json::Value,
    outputs: OutputStore,
    upload_idle: Duration,
    metrics: Metrics,
    /// The nonces of large bodies being received ([`intake::NoncesInFlight`]).
    nonces_in_flight: intake::NoncesInFlight,
}

impl Coordinator {
    /// A coordinator over an open database, the issuer key, the admin token and the output
    /// store.
    pub fn new(
        db: Db,
        key: IssuerKey,
        admin: AdminToken,
        outputs: OutputStore,
    ) -> Result<Coordinator, StateError> {
        let issuer = db.issuer()?;
        let public = key.verifying_key();
        Ok(Coordinator {
            db: Mutex::new(db),
            runner_keys: auth::RunnerKeys::default(),
            outputs,
            upload_idle: UPLOAD_IDLE,
            metrics: Metrics::new(state::now()),
            nonces_in_flight: intake::NoncesInFlight::default(),
            jwks: oidc::jwks(&public),
            discovery: oidc::discovery(&issuer),
            key,
            admin,
            issuer,
        })
    }

    /// How long an upload may go without a byte arriving (default 30 s).
    pub fn with_upload_idle_timeout(mut self, idle: Duration) -> Coordinator {
        self.upload_idle = idle;
        self
    }

    /// The served TLS certificate's expiry, for the metrics ([`crate::tls::Served`]).
    pub fn with_tls_expiry(mut self, expiry: Arc<std::sync::atomic::AtomicU64>) -> Coordinator {
        self.metrics.tls_expiry = Some(expiry);
        self
    }
}

type Shared = Arc<Coordinator>;

/// The routes, with each route's body intake ([`intake`]) and the JSON error rewriting; the
/// small routes' bodies must arrive within [`SMALL_BODY_TIMEOUT`], and at most
/// [`DEFAULT_LARGE_BODY_BUDGET`] bytes of larger ones are read at once.
pub fn router(coordinator: Coordinator) -> Router {
    let options = ServeOptions::default();
    router_shared(
        Arc::new(coordinator),
        &options,
        &BodyBudget::for_options(&options),
    )
}

/// [`router`] over a coordinator shared with other tasks (the sweep in [`serve`]), with the
/// body limits of `options` and the budget of large bodies `budget`.
fn router_shared(c: Shared, options: &ServeOptions, budget: &BodyBudget) -> Router {
    let small_body_timeout = options.small_body_timeout;
    let small = |gate| Intake {
        gate,
        limit: MAX_SMALL_BODY_BYTES,
        deadline: small_body_timeout,
    };
    // A body that may be large is read within the small routes' deadline plus its length
    // at the minimum rate (`intake::Pace`), applied by the intake itself: the router may be
    // served without `request_deadline` around it, and a body it spares must still not be
    // waited for forever.
    let large = |gate, limit| Intake {
        gate,
        limit,
        deadline: small_body_timeout,
    };
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/jwks.json", get(jwks))
        .route(
            "/v1/runners/register",
            with_intake(post(register), &c, budget, small(Gate::Open)),
        )
        .route(
            "/v1/runners/lease",
            with_intake(post(lease), &c, budget, small(Gate::RunnerNamingDigest)),
        )
        .route(
            "/v1/runners/rekey",
            with_intake(post(rekey), &c, budget, small(Gate::Runner)),
        )
        .route(
            "/v1/jobs",
            with_intake(
                post(submit),
                &c,
                budget,
                large(Gate::Admin, MAX_SUBMIT_BODY_BYTES),
            ),
        )
        .route("/v1/jobs/{id}", get(job))
        .route(
            "/v1/jobs/{id}/id-token",
            with_intake(post(id_token), &c, budget, small(Gate::Runner)),
        )
        .route(
            "/v1/jobs/{id}/heartbeat",
            with_intake(post(heartbeat), &c, budget, small(Gate::Runner)),
        )
        // Reads no body (the router's small default would apply if it did).
        .route("/v1/jobs/{id}/cancel", post(cancel))
        // A result with its provenance: the one body up to `MAX_BODY_BYTES`.
        .route(
            "/v1/jobs/{id}/result",
            with_intake(
                post(result),
                &c,
                budget,
                large(Gate::Runner, MAX_BODY_BYTES),
            ),
        )
        .route("/v1/jobs/{id}/provenance", get(provenance))
        .route("/v1/inventory", get(inventory))
        .route("/v1/jobs/{id}/outputs/{*path}", get(output))
        .route("/v1/jobs/{id}/logs/{name}", get(log))
        // The daemon sends at most 1 MiB at a time; each append is written under the
        // database lock, so it is kept small.
        .route(
            "/v1/jobs/{id}/live-log/{offset}",
            with_intake(
                put(live_log),
                &c,
                budget,
                large(Gate::Runner, MAX_LIVE_LOG_APPEND),
            ),
        )
        // Streamed to disk as it arrives, with its own limits, checked whole before a byte is
        // read (`upload_blob`).
        .route(
            BLOB_ROUTE,
            put(upload_blob).layer(DefaultBodyLimit::disable()),
        )
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::map_response(answered_here))
        .layer(DefaultBodyLimit::max(MAX_SMALL_BODY_BYTES))
        .with_state(c)
}

/// Marks an answer as the coordinator's own ([`control::headers::COORDINATOR`]): a runner
/// counts a `503` with it (a busy body budget) as its coordinator answering, and one without
/// it (a proxy in front of a coordinator that is down) as no answer. Applied to the routes
/// ([`router`]) and again outermost in [`app`], so that the request deadline's `408` carries
/// it too; hyper's own answers to a request it cannot parse (`400`, `414`, `431`) are made
/// before any of this and do not.
async fn answered_here(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(control::headers::COORDINATOR, HeaderValue::from_static("1"));
    response
}

/// Limits that keep slow or idle clients from holding the coordinator's connections and
/// memory (a request body is buffered whole, up to its route's limit, once its headers passed
/// the checks that need no body: [`intake`]).
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// How long a client may take to send a request's headers; also how long an idle
    /// keep-alive connection is kept (hyper's `header_read_timeout` runs from the moment the
    /// connection waits for a request).
    pub header_read_timeout: Duration,
    /// How long a request may take from its headers to its answer, body upload included,
    /// plus its announced `Content-Length` (at most [`MAX_BODY_BYTES`]) at
    /// [`control::MIN_BODY_RATE`]; longer is answered `408` and the connection closed.
    pub request_timeout: Duration,
    /// How long the body of a small request (registration, lease, heartbeat, rekey, identity
    /// token) may take once its headers passed their checks; longer is answered `408` and the
    /// connection closed. A larger body (a result, a live-log append, a submission) gets this
    /// and then its length at [`control::MIN_BODY_RATE`], once it has room in the budget, and
    /// is cut as soon as it falls behind that rate.
    pub small_body_timeout: Duration,
    /// Most connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Most connections one client (an IPv4 address, an IPv6 /64) holds at once; more are
    /// closed as soon as they are accepted ([`peers`]). 0 (the default): no bound per client.
    pub max_connections_per_address: usize,
    /// Most bytes of bodies larger than [`MAX_SMALL_BODY_BYTES`] (results, live-log appends,
    /// submissions) read at once, by what they announce; more wait (`intake::BodyBudget`).
    pub large_body_budget: usize,
    /// Most bytes of one runner's large bodies read at once, by what they announce
    /// ([`DEFAULT_LARGE_BODY_SHARE`]); more wait, holding none of the budget, and are answered
    /// `503` like a body the budget has no room for.
    pub large_body_share: usize,
    /// How long a large body waits for room in that budget before it is answered `503`,
    /// unread ([`LARGE_BODY_WAIT`]: less than a runner's daemon waits for an answer).
    pub large_body_wait: Duration,
    /// How long a shutdown waits for the requests in flight.
    pub drain_timeout: Duration,
    /// How often the outputs of jobs whose lease ran out without a result are removed.
    pub sweep_interval: Duration,
}

/// The default of [`ServeOptions::max_connections_per_address`]: no bound. Any default would
/// be wrong for some fleet: runners behind one NAT address, an L4 load balancer that
/// translates source addresses, or a cloud subnet whose hosts share one IPv6 /64 all come
/// from one client, and a bound below their sum refuses runners at random
/// (docs/control-plane.md, "Connections", says when to set it and how to size it).
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 0;

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(15),
            // Plus the body's length at `MIN_BODY_RATE` (an 8 MiB result: 128 s more).
            request_timeout: Duration::from_secs(120),
            small_body_timeout: SMALL_BODY_TIMEOUT,
            max_connections: 512,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            large_body_budget: DEFAULT_LARGE_BODY_BUDGET,
            large_body_share: DEFAULT_LARGE_BODY_SHARE,
            large_body_wait: LARGE_BODY_WAIT,
            drain_timeout: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(600),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets the
/// requests in flight finish (for at most [`ServeOptions::drain_timeout`]) and returns.
///
/// Served with hyper's HTTP/1 connection builder rather than `axum::serve`, which sets no
/// timer and so has no header-read or idle timeout: a client that opens connections and sends
/// nothing would hold them (and their file descriptors) forever.
pub async fn serve(
    listener: tokio::net::TcpListener,
    coordinator: Coordinator,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with_metrics(listener, None, None, coordinator, options, shutdown).await
}

/// [`serve`], over TLS when `tls` is given ([`crate::tls`]: the handshake must finish within
/// [`ServeOptions::header_read_timeout`]), and when `metrics` is given, `GET /metrics` on it
/// ([`crate::metrics`]) until the shutdown: no authentication there, at most 16 connections.
pub async fn serve_with_metrics(
    listener: tokio::net::TcpListener,
    metrics: Option<tokio::net::TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    coordinator: Coordinator,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let shared = Arc::new(coordinator);
    let sweeper = tokio::spawn(sweep_unreported(
        Arc::clone(&shared),
        options.sweep_interval,
    ));
    let scrapes = metrics.map(|l| tokio::spawn(serve_metrics(l, Arc::clone(&shared), options)));
    let app = app(&shared, &options, &BodyBudget::for_options(&options));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    let live = live::Live::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
    let per_client = (options.max_connections_per_address > 0)
        .then(|| peers::AddressSlots::new(options.max_connections_per_address));
    if tls.is_some() && per_client.is_none() {
        // Serving clients directly, one address may hold every connection: said once, so the
        // operator who can bound it (no NAT, no L4 balancer, no shared /64) knows how.
        tracing::info!(
            max_connections = options.max_connections,
            "no bound on the connections one client address holds; where each runner has an \
             address of its own, set --max-connections-per-address (docs/control-plane.md, \
             \"Connections\")"
        );
    }
    let mut refusals = peers::RefusalLog::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a little rather than spin, and go on serving.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // A client holding its most already: closed before a byte of it is read (or a TLS
        // handshake begun), and its permit given back at once.
        let slot = match &per_client {
            None => None,
            Some(slots) => match slots.take(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    drop(stream);
                    shared.metrics.connection_refused();
                    refusals.refused(peer.ip(), options.max_connections_per_address);
                    continue;
                }
            },
        };
        // Every slot taken: the oldest connection gives way ([`live`]), at once if it is
        // between requests, after its request otherwise; while none has, the next oldest is
        // asked every quarter second, so one long request (an upload) does not hold up the
        // connections waiting behind it.
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // The first tick is at once.
                let mut ask = tokio::time::interval(live::ASK_NEXT_EVERY);
                let waited = loop {
                    tokio::select! {
                        permit = Arc::clone(&permits).acquire_owned() => break permit.ok(),
                        _ = ask.tick() => {
                            live.ask_oldest_to_close();
                        }
                        () = &mut shutdown => break None,
                    }
                };
                match waited {
                    Some(p) => p,
                    None => break,
                }
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let entry = live.register();
        let Some(tls) = &tls else {
            let conn = entry.serve(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop((permit, slot));
            });
            continue;
        };
        // The handshake runs in the connection's task, under the header timeout. A connection
        // whose handshake ends after a shutdown began is closed before its request is read
        // (its client retries); one already serving a request finishes it.
        let (tls, http) = (tls.clone(), http.clone());
        let handshake_timeout = options.header_read_timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = entry.serve(conn).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
            drop((permit, slot));
        });
    }
    drop(listener);
    sweeper.abort();
    if let Some(scrapes) = scrapes {
        scrapes.abort();
    }
    tracing::info!(
        connections = live.count(),
        "shutting down: waiting for the requests in flight"
    );
    live.stop();
    if tokio::time::timeout(options.drain_timeout, live.drained())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: requests still in flight after the drain timeout were cut");
    }
    Ok(())
}

/// The API as [`serve`] answers it: the routes over `budget`, each request within its
/// deadline ([`request_deadline`]), and every answer counted.
fn app(shared: &Shared, options: &ServeOptions, budget: &BodyBudget) -> Router {
    // Outermost, so that every answer is counted and marked, a `408` of the deadline's too.
    router_shared(Arc::clone(shared), options, budget)
        .layer(axum::middleware::from_fn_with_state(
            options.request_timeout,
            request_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(shared),
            count_response,
        ))
        .layer(axum::middleware::map_response(answered_here))
}

/// Counts each answer of the API by its status class.
async fn count_response(
    State(c): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    c.metrics.response(response.status().as_u16());
    response
}

/// The most scrapes served at once; more wait in the listen backlog.
const MAX_METRICS_CONNECTIONS: usize = 16;

/// How long a scrape may take to send its request headers; a connection is closed after one
/// request, so this also bounds how long a silent client holds a connection.
const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` until the task is aborted, one request per
/// connection, headers within [`METRICS_HEADER_TIMEOUT`], the API's request deadline.
/// Anything else is `404`.
async fn serve_metrics(listener: tokio::net::TcpListener, c: Shared, options: ServeOptions) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(c)
        .layer(axum::middleware::from_fn_with_state(
            options.request_timeout,
            request_deadline,
        ))
        .layer(axum::middleware::map_response(answered_here));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(METRICS_HEADER_TIMEOUT)
        .keep_alive(false);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// `GET /metrics`: the text exposition format; `500` when the database cannot be read (a
/// scrape that fails is itself the signal).
async fn metrics(State(c): State<Shared>) -> Response {
    let snapshot = with_db(&c, |_, db| Ok(db.metrics_snapshot(state::now())?)).await;
    match snapshot {
        Ok(snapshot) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(bulwark_protocol::prometheus::CONTENT_TYPE),
            )],
            c.metrics.render(&snapshot, state::now()),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e.message, "reading the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Every `interval`, removes what was uploaded for jobs whose lease ran out without a result:
/// no result lists it and none can come, so it would otherwise stay until the operator
/// prunes (a runner that uploads and never reports must not park data here).
async fn sweep_unreported(c: Shared, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The ids under the database lock; the files outside it (no upload can be stored for
        // a lost job: its lease is checked again before any is).
        let swept = match with_db(&c, |_, db| Ok(db.unreported_jobs_ended(state::now())?)).await {
            Ok(ids) => {
                let c = Arc::clone(&c);
                tokio::task::spawn_blocking(move || {
                    let mut removed = Vec::new();
                    for id in ids {
                        if let Some(bytes) = c.outputs.remove_job(&id)? {
                            removed.push((id, bytes));
                        }
                    }
                    Ok::<_, OutputError>(removed)
                })
                .await
                .map_err(|e| ApiError::internal(&e))
                .and_then(|r| r.map_err(ApiError::from))
            }
            Err(e) => Err(e),
        };
        match swept {
            Ok(removed) => {
                for (job_id, bytes) in removed {
                    tracing::info!(job_id = %job_id, bytes, "uploads of a job that never reported removed");
                }
            }
            Err(e) => {
                tracing::error!(error = %e.message, "sweeping the uploads of unreported jobs")
            }
        }
    }
}

/// Answers `408` to a request not done within its deadline (the body is read inside the
/// handler, so a body that trickles in is cut too); hyper then closes the connection, as the
/// body was not read to its end.
async fn request_deadline(
    State(limit): State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // An output upload may be gigabytes: it has a deadline in proportion to its declared
    // length and an idle limit of its own (`upload_blob`). Every other request has this one:
    // the route is the one the router matched, not a path that looks like it (the live log
    // of a job named `blobs` is `PUT /v1/jobs/blobs/live-log/0`).
    let upload = request.method() == Method::PUT
        && request
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|route| route.as_str() == BLOB_ROUTE);
    if upload {
        return next.run(request).await;
    }
    // The body it announces at the minimum rate, on top: no route under this deadline reads
    // more than `MAX_BODY_BYTES` (a larger announcement is refused before it is read). A body
    // of no announced length (chunked) is given that most, so that it too fails only on a
    // link slower than the minimum rate: its route's intake still bounds it (its limit, its
    // pace, its idle limit). Hyper checked the `Content-Length` it reports here.
    let announced = request
        .body()
        .size_hint()
        .exact()
        .unwrap_or(MAX_BODY_BYTES as u64)
        .min(MAX_BODY_BYTES as u64);
    let limit = limit + control::body_allowance(announced);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request not received in time (at most {} s)",
                    limit.as_secs()
                ),
            )
            .into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

/// Gives every non-2xx answer that is not already JSON an [`ErrorBody`].
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.is_success() || status.is_informational() || is_json {
        return response;
    }
    let message = match status {
        StatusCode::NOT_FOUND => "no such endpoint".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this endpoint".to_owned(),
        // Only a route without an intake of its own reads a body this way (each intake answers
        // its own limit): the router's default limit applied.
        StatusCode::PAYLOAD_TOO_LARGE => intake::too_large(MAX_SMALL_BODY_BYTES),
        StatusCode::BAD_REQUEST => "request not understood (path or headers)".to_owned(),
        other => format!(
            "request refused: {}",
            other.canonical_reason().unwrap_or("error")
        ),
    };
    ApiError::new(status, message).into_response()
}

/// Runs `f` with the database on the blocking pool.
async fn with_db<T: Send + 'static>(
    c: &Shared,
    f: impl FnOnce(&Coordinator, &mut Db) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let c = Arc::clone(c);
    tokio::task::spawn_blocking(move || f(&c, &mut auth::lock(&c.db)))
        .await
        .map_err(|e| ApiError::internal(&e))?
}

fn parse_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not a valid {what}: {e}")))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request target as sent (path and query): what a runner signs.
fn request_target(uri: &Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned())
}

async fn discovery(State(c): State<Shared>) -> Json<serde_json::Value> {
    Json(c.discovery.clone())
}

async fn jwks(State(c): State<Shared>) -> Json<serde_json::Value> {
    Json(c.jwks.clone())
}

async fn register(
    State(c): State<Shared>,
    body: Bytes,
) -> Result<Json<RegisterResponse>, ApiError> {
    let request: RegisterRequest = parse_body(&body, "registration request")?;
    bulwark_protocol::check_name(&request.name)
        .map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
    let key = keys::parse_public_key(&request.public_key)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let public_key = keys::public_key_pem(&key).map_err(|e| ApiError::internal(&e))?;
    let runner_id = format!("runner-{}", auth::hex(&auth::random_bytes::<16>()?));
    let token_hash = auth::sha256_hex(request.token.as_bytes());
    with_db(&c, move |c, db| {
        let now = state::now();
        let runner = Runner {
            id: runner_id,
            name: request.name,
            public_key,
            registered_at: now,
            removed_at: None,
        };
        db.register_runner(&token_hash, &runner, now)?;
        tracing::info!(runner_id = %runner.id, name = %runner.name, "runner registered");
        Ok(Json(RegisterResponse {
            runner_id: runner.id,
            issuer: c.issuer.clone(),
        }))
    })
    .await
}

/// `POST /v1/runners/rekey`: signed with the runner's current key; the new key must sign
/// [`control::rekey_proof_input`]. Asking again for the key already recorded (an answer that
/// was lost) is answered as the first time.
async fn rekey(
    State(c): State<Shared>,
    arrived: Arrived,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RekeyResponse>, ApiError> {
    signed(
        &c,
        arrived,
        method,
        &uri,
        &headers,
        body,
        move |c, db, runner, body| {
            let request: RekeyRequest = parse_body(body, "rekey request")?;
            let key = keys::parse_public_key(&request.public_key)
                .map_err(|e| ApiError::bad_request(format!("public_key: {e}")))?;
            let proof = base64::engine::general_purpose::STANDARD
                .decode(request.proof.trim())
                .map_err(|_| ApiError::bad_request("proof: not base64"))?;
            let proven = control::rekey_proof_input(&runner.id, &request.public_key)
                .is_some_and(|input| keys::verify_der(&key, &input, &proof));
            if !proven {
                return Err(ApiError::bad_request(
                    "proof: the new key's signature over the rekey proof does not verify",
                ));
            }
            let public_key = keys::public_key_pem(&key).map_err(|e| ApiError::internal(&e))?;
            if public_key != runner.public_key {
                if !db.set_runner_key(&runner.id, &public_key)? {
                    return Err(StateError::RunnerNotActive {
                        runner_id: runner.id,
                    }
                    .into());
                }
                c.runner_keys.forget(&runner.id);
                tracing::info!(runner_id = %runner.id, name = %runner.name, "runner re-keyed");
            }
            Ok(Json(RekeyResponse {
                runner_id: runner.id,
            }))
        },
    )
    .await
}

/// Checks the part of a spec the coordinator itself relies on: a source a remote runner can
/// fetch and that job tokens can name, a name fit for claims, a timeout it can lease for.
/// Everything else is the runner's to validate, against its own operator's ceilings.
pub fn check_spec(spec: &JobSpec) -> Result<(), String> {
    bulwark_protocol::check_name(&spec.name).map_err(|e| format!("spec.name: {e}"))?;
    let need = "spec.source: a job for the coordinator needs a git source with a commit, or a \
                url with a sha256 (a runner has no local directory to take it from)";
    let source = spec.source.as_ref().ok_or(need)?;
    if source.path.is_some() {
        return Err(need.to_owned());
    }
    match (&source.git, &source.commit, &source.url, &source.sha256) {
        (Some(_), Some(commit), None, None) => {
            let hex = commit
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !(hex && (commit.len() == 40 || commit.len() == 64)) {
                return Err(
                    "spec.source.commit: must be a full commit id (40 or 64 lowercase hex)".into(),
                );
            }
        }
        (None, None, Some(_), Some(sha256)) => {
            bulwark_protocol::check_sha256(sha256)
                .map_err(|e| format!("spec.source.sha256: {e}"))?;
        }
        _ => return Err(need.to_owned()),
    }
    // The repository (the git URL, or the url) goes into the token's `repository` claim and
    // its `sub`: checked as the runner checks it, so what is minted names exactly what a
    // runner would fetch, and with no `:` past its host and port, so that a wildcard trust
    // policy (`repo:*:ref:refs/heads/main:*`) cannot be met by a repository spelling out
    // `:ref:refs/heads/main:` itself.
    let (field, repository) = match (&source.git, &source.url) {
        (Some(git), _) => ("spec.source.git", git),
        (None, Some(url)) => ("spec.source.url", url),
        (None, None) => return Err(need.to_owned()),
    };
    bulwark_protocol::check_source_url(repository).map_err(|e| format!("{field}: {e}"))?;
    let parsed = url::Url::parse(repository).map_err(|e| format!("{field}: {e}"))?;
    if parsed.path().contains(':')
        || parsed.query().is_some_and(|q| q.contains(':'))
        || parsed.fragment().is_some_and(|f| f.contains(':'))
    {
        return Err(format!(
            "{field}: must have no ':' after its host and port (it goes into the job token's \
             sub, where it could pass for another subject)"
        ));
    }
    // The ref goes into the token's `sub` (`repo:<repository>:ref:<ref>:trust:<level>`),
    // which cloud trust policies match: with a `:` in it, a ref could pass for another
    // subject. Git refs never hold one, nor whitespace or control characters.
    if let Some(r) = &source.r#ref {
        if r.is_empty()
            || r.len() > 1024
            || r.chars()
                .any(|c| c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(
                "spec.source.ref: must be a git ref (no ':', whitespace or control characters)"
                    .into(),
            );
        }
    }
    if let Some(t) = &spec.resources.timeout {
        bulwark_protocol::parse_duration(t).map_err(|e| format!("spec.resources.timeout: {e}"))?;
    }
    Ok(())
}

/// A new job's id: `job-` and 32 random hex digits.
pub fn new_job_id() -> Result<String, AuthError> {
    Ok(format!("job-{}", auth::hex(&auth::random_bytes::<16>()?)))
}

async fn submit(
    State(c): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Submitted>, ApiError> {
    c.admin
        .check_authorization(header_str(&headers, header::AUTHORIZATION.as_str()))?;
    let request: SubmitJob = parse_body(&body, "job submission")?;
    check_spec(&request.spec).map_err(ApiError::bad_request)?;
    let job_id = new_job_id()?;
    with_db(&c, move |c, db| {
        db.submit_job(&job_id, &request.spec, request.trust, state::now())?;
        c.metrics.submitted(request.trust);
        tracing::info!(job_id = %job_id, trust = request.trust.as_str(), "job queued");
        Ok(Json(Submitted { job_id }))
    })
    .await
}

async fn job(
    State(c): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<JobRecord>, ApiError> {
    let job = admin_job(&c, &headers, &id).await?;
    Ok(Json(JobRecord {
        job_id: job.id,
        state: job.state,
        trust: job.trust,
        name: job.name,
        runner_id: job.runner_id,
        result: job.result,
        cancel_requested_at: job.cancel_requested_at,
    }))
}

/// `POST /v1/jobs/{id}/cancel` (admin): cancels a queued job at once (finished, `refused`, it
/// never runs) or asks the runner of a leased one to stop it ([`heartbeat`]); `409` for a job
/// that has ended.
async fn cancel(
    State(c): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<CancelAnswer>, ApiError> {
    c.admin
        .check_authorization(header_str(&headers, header::AUTHORIZATION.as_str()))?;
    with_db(&c, move |c, db| {
        let state = match db.cancel(&id, state::now())? {
            state::Cancelled::BeforeItRan => JobState::Finished,
            state::Cancelled::Requested => JobState::Leased,
        };
        tracing::info!(job_id = %id, ?state, "job cancelled by the operator");
        c.metrics.cancel_requested();
        Ok(Json(CancelAnswer { state }))
    })
    .await
}

/// `POST /v1/jobs/{id}/heartbeat` (runner, while the job runs): whether the operator
/// cancelled it. Only the lease holder's, while the lease lasts.
async fn heartbeat(
    State(c): State<Shared>,
    Path(id): Path<String>,
    arrived: Arrived,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Heartbeat>, ApiError> {
    signed(
        &c,
        arrived,
        method,
        &uri,
        &headers,
        body,
        move |_, db, runner, _| {
            let cancel = db.cancel_requested(&id, &runner.id, state::now())?;
            Ok(Json(Heartbeat { cancel }))
        },
    )
    .await
}

/// A signed runner request, authenticated on the blocking pool (the signature off the
/// database lock) before `f` runs with its runner and the database. A body that does not hash
/// to the digest the request named ([`control::headers::CONTENT_SHA256`], which the gate
/// checked the signature against: [`intake`]) is refused before the signature is checked.
async fn signed<T: Send + 'static>(
    c: &Shared,
    arrived: Arrived,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    f: impl FnOnce(&Coordinator, &mut Db, Runner, &[u8]) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let signed = SignedHeaders::read(|name| header_str(headers, name))?;
    let claimed = auth::read_body_digest(|name| header_str(headers, name))?;
    let target = request_target(uri);
    let c = Arc::clone(c);
    tokio::task::spawn_blocking(move || {
        let now = state::now();
        let digest = auth::check_body_digest(claimed.as_deref(), &body)?;
        let (runner, mut db) = auth::verify_signed_request_for_digest(
            &c.db,
            &c.runner_keys,
            method.as_str(),
            &target,
            &signed,
            &digest,
            RequestTime {
                arrived: arrived.0,
                now,
            },
        )?;
        c.metrics.runner_seen(&runner.id, now);
        f(&c, &mut db, runner, &body)
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
}

/// `POST /v1/runners/lease` (runner): a job for the asking runner, `204` when there is none.
/// Its body ([`control::LeaseRequest`]) may list the jobs the runner holds; then a job leased
/// to it that it does not list is offered again first ([`state::Db::offer`]). A body without
/// that list (`{}`, or none) is answered as before; a malformed one is `400`, naming the field.
async fn lease(
    State(c): State<Shared>,
    arrived: Arrived,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    signed(
        &c,
        arrived,
        method,
        &uri,
        &headers,
        body,
        |c, db, runner, body| {
            let request = control::LeaseRequest::parse(body).map_err(|e| {
                ApiError::bad_request(format!("request body is not a valid lease request: {e}"))
            })?;
            Ok(
                match db.offer(&runner.id, request.holding.as_deref(), state::now())? {
                    Some(offer) if offer.again => {
                        tracing::warn!(job_id = %offer.lease.job_id, runner_id = %runner.id, expires_at = offer.lease.expires_at, "job offered again to the runner it is leased to: the runner does not list it as held (the lease's answer was lost, or the runner restarted)");
                        c.metrics.offered_again();
                        Json(offer.lease).into_response()
                    }
                    Some(offer) => {
                        tracing::info!(job_id = %offer.lease.job_id, runner_id = %runner.id, "job leased");
                        c.metrics.leased();
                        Json(offer.lease).into_response()
                    }
                    None => StatusCode::NO_CONTENT.into_response(),
                },
            )
        },
    )
    .await
}

async fn id_token(
    State(c): State<Shared>,
    Path(id): Path<String>,
    arrived: Arrived,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<IdToken>, ApiError> {
    signed(&c, arrived, method, &uri, &headers, body, move |c, db, runner, body| {
        let request: IdTokenRequest = parse_body(body, "identity token request")?;
        oidc::check_audience(&request.audience)?;
        let now = state::now();
        let job = db.job_for_id_token(&id, &runner.id, now)?;
        let lease_end = job.lease_expires_at.unwrap_or(now);
        let jti = auth::hex(&auth::random_bytes::<16>()?);
        let claims = Claims::for_job(&c.issuer, &job, &runner, &request.audience, now, lease_end, jti)?;
        let token = oidc::mint(&c.key, &claims)?;
        tracing::info!(job_id = %job.id, runner_id = %runner.id, audience = %claims.aud, "job identity token minted");
        c.metrics.id_token();
        Ok(Json(IdToken {
            token,
            expires_at: claims.exp,
        }))
    })
    .await
}

async fn result(
    State(c): State<Shared>,
    Path(id): Path<String>,
    arrived: Arrived,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    signed(
        &c,
        arrived,
        method,
        &uri,
        &headers,
        body,
        move |c, db, runner, body| {
            let report: ResultReport = parse_body(body, "result report")?;
            let now = state::now();
            let mut reported: Vec<(String, String)> = report
                .outputs()
                .map_err(ApiError::bad_request)?
                .into_iter()
                .map(|o| (o.path, o.sha256))
                .collect();
            report.check_logs().map_err(ApiError::bad_request)?;
            reported.extend(report.logs.iter().map(|l| (l.name.clone(), l.sha256.clone())));
            // A finished job's outputs are here: a result listing one that was not uploaded
            // is refused (the lease holder may upload it and report again). Checked only for
            // the lease holder; anyone else gets `record_result`'s own refusal.
            let holder = match db.job_leased_to(&id, &runner.id, now) {
                Ok(_) => true,
                Err(StateError::NotLeasedToRunner { .. } | StateError::LeaseOver { .. }) => false,
                Err(e) => return Err(e.into()),
            };
            if holder {
                for (path, sha) in &reported {
                    if !c.outputs.contains(&id, sha)? {
                        return Err(ApiError::bad_request(format!(
                            "result: {path:?} (sha256 {sha}) was not uploaded; PUT /v1/jobs/{id}/blobs/{sha} first"
                        )));
                    }
                }
            }
            db.record_result(&id, &runner.id, &report, now)?;
            tracing::info!(job_id = %id, runner_id = %runner.id, "job result recorded");
            c.metrics
                .result(report.result.get("status").and_then(serde_json::Value::as_str));
            // Uploaded but not in the result: not an output of this job.
            let keep: HashSet<&str> = reported.iter().map(|(_, sha)| sha.as_str()).collect();
            match c.outputs.retain_only(&id, &keep) {
                Ok(0) => {}
                Ok(n) => tracing::warn!(job_id = %id, blobs = n, "uploads the result does not list were removed"),
                Err(e) => tracing::error!(job_id = %id, error = %e, "removing uploads the result does not list"),
            }
            // The final job.log is a blob now; the live one was only ever a view of it.
            if let Err(e) = c.outputs.remove_live_log(&id) {
                tracing::error!(job_id = %id, error = %e, "removing the live log");
            }
            Ok(StatusCode::NO_CONTENT)
        },
    )
    .await
}

/// The largest live-log append taken in one request.
pub const MAX_LIVE_LOG_APPEND: usize = 2 << 20;

/// `PUT /v1/jobs/{id}/live-log/{offset}` (runner): the next bytes of a running job's
/// `job.log`, starting at `offset` ([`outputs`], "The live log"). Only the lease holder's,
/// only while the lease lasts; stored under the database lock, so an append cannot land after
/// the result that removes the live log.
async fn live_log(
    State(c): State<Shared>,
    Path((id, offset)): Path<(String, String)>,
    arrived: Arrived,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    outputs::check_job_id(&id)?;
    // Digits only: the signed path and the number must be the same text.
    let offset: u64 = Some(offset.as_str())
        .filter(|o| !o.is_empty() && o.len() <= 19 && o.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|o| o.parse().ok())
        .ok_or_else(|| ApiError::bad_request("live log: the offset is not a number"))?;
    signed(
        &c,
        arrived,
        method,
        &uri,
        &headers,
        body,
        move |c, db, runner, body| {
            db.job_leased_to(&id, &runner.id, state::now())?;
            c.outputs.append_live_log(&id, offset, body)?;
            Ok(StatusCode::NO_CONTENT)
        },
    )
    .await
}

/// The route of an output upload: the one request `request_deadline` spares.
const BLOB_ROUTE: &str = "/v1/jobs/{id}/blobs/{sha256}";

/// How long an upload may go without a byte arriving.
const UPLOAD_IDLE: Duration = Duration::from_secs(30);

/// How long an upload is given before [`control::MIN_BODY_RATE`] applies to it: from then on
/// it must have arrived at that rate since (`intake::Pace`), so its deadline is this plus its
/// length at that rate, and one that falls behind is cut at once.
const UPLOAD_GRACE: Duration = control::UPLOAD_GRACE;

// A large body's whole check (room, then its length at the minimum rate) ends before its
// timestamp stops being judged by its arrival (`auth::MAX_REQUEST_AGE_SECS`).
const _: () = assert!(
    LARGE_BODY_WAIT.as_secs()
        + SMALL_BODY_TIMEOUT.as_secs()
        + (control::MAX_BODY_BYTES as u64).div_ceil(control::MIN_BODY_RATE)
        < auth::MAX_REQUEST_AGE_SECS
);

/// `PUT /v1/jobs/{id}/blobs/{sha256}` (runner): one output's bytes, streamed to the output
/// store. The signature covers `sha256` as the body's hash, so it is checked, with the lease,
/// before the body is read (beyond what hyper's read buffer already holds); the bytes are then
/// held to it ([`outputs`]). A refusal before the body (a signature, the lease, no room) is
/// answered as the intake answers its own: after the body still coming is read and thrown
/// away, for at most [`REFUSED_BODY_DRAIN`] and its `Content-Length`, so the client reads the
/// status instead of a reset ([`intake::refuse_early`]).
async fn upload_blob(
    State(c): State<Shared>,
    Path((id, sha)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match begin_upload(&c, &id, &sha, method, &uri, &headers).await {
        Err(e) => {
            // What is drained is thrown away chunk by chunk, never kept, and only within the
            // drain's time: at most what the client sends meanwhile.
            let most = body
                .size_hint()
                .exact()
                .map_or(MAX_BODY_BYTES, |n| usize::try_from(n).unwrap_or(usize::MAX));
            intake::refuse_early(e, &headers, body, most).await
        }
        // Stored already (a retry whose first answer was lost): its body is read and thrown
        // away before the `204`, under the upload's own limits. Answered with the body unread,
        // the connection would be reset under a client still sending it, which would take the
        // reset for a transient failure and send the whole file again until the lease ends.
        Ok(None) => match discard_upload(&c, &headers, body).await {
            None => StatusCode::NO_CONTENT.into_response(),
            Some(cut) => intake::closing(cut.into_response()),
        },
        Ok(Some(begun)) => match receive_upload(&c, &id, &sha, begun, body).await {
            Ok(status) => status.into_response(),
            Err(e) => e.into_response(),
        },
    }
}

/// The checks of an upload before its body: its signature, the lease, its length and room
/// for it; `None` when its bytes are stored already (a retry whose first answer was lost),
/// else the upload begun.
async fn begin_upload(
    c: &Shared,
    id: &str,
    sha: &str,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<Begun>, ApiError> {
    let signed = SignedHeaders::read(|name| header_str(headers, name))?;
    outputs::check_sha256(sha)?;
    let len: u64 = match header_str(headers, header::CONTENT_LENGTH.as_str()) {
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::bad_request("Content-Length: not a number"))?,
        None => {
            return Err(ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                "an upload needs a Content-Length: room is reserved before the body is read",
            ))
        }
    };
    let target = request_target(uri);
    let (job_id, digest) = (id.to_owned(), sha.to_owned());
    let shared = Arc::clone(c);
    let stored = tokio::task::spawn_blocking(move || {
        let c = shared;
        let now = state::now();
        let (runner, mut db) = auth::verify_signed_request_for_digest(
            &c.db,
            &c.runner_keys,
            method.as_str(),
            &target,
            &signed,
            &digest,
            RequestTime::at(now),
        )?;
        c.metrics.runner_seen(&runner.id, now);
        db.job_leased_to(&job_id, &runner.id, now)?;
        Ok::<_, ApiError>((c.outputs.stored_len(&job_id, &digest)?, runner.id))
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    let (stored, runner_id) = stored;
    if let Some(size) = stored {
        // A retry sends the same bytes: any other length is not this blob, and would have
        // the drain read whatever it announced (no room is reserved for a retry).
        if size != len {
            return Err(ApiError::bad_request(format!(
                "Content-Length {len} is not the size of blob {sha}, stored already with \
                 {size} bytes; a blob is named by its sha256, so send exactly those bytes"
            )));
        }
        return Ok(None);
    }
    // Listing the job's blobs and creating the file are disk work: off the event loop.
    let (c, id, sha) = (Arc::clone(c), id.to_owned(), sha.to_owned());
    let upload = tokio::task::spawn_blocking(move || {
        c.outputs.begin(&id, &sha, c.outputs.reserve(&id, len)?)
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    Ok(Some(Begun {
        upload,
        len,
        runner_id,
    }))
}

/// An upload whose checks passed, its file created and its room reserved.
struct Begun {
    upload: outputs::Upload,
    /// Its `Content-Length`.
    len: u64,
    /// The lease holder sending it.
    runner_id: String,
}

/// Receives the bytes of an upload `begun`, and stores them.
async fn receive_upload(
    c: &Shared,
    id: &str,
    sha: &str,
    begun: Begun,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let Begun {
        upload,
        len,
        runner_id,
    } = begun;
    let (id, sha) = (id.to_owned(), sha.to_owned());
    // Written and hashed on the blocking pool, fed through a short queue: the event loop only
    // moves chunks, and a slow disk holds the sender back instead of filling memory.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let writer = tokio::task::spawn_blocking(move || {
        let mut upload = upload;
        while let Some(chunk) = rx.blocking_recv() {
            upload.write(&chunk)?;
        }
        upload.verify()?;
        Ok::<_, OutputError>(upload)
    });
    let cut = read_upload_body(c, body, Some(&tx)).await;
    drop(tx);
    let written = writer.await.map_err(|e| ApiError::internal(&e))?;
    if let Some(cut) = cut {
        // The writer saw a short body and removed what it had; the cut is the reason.
        return Err(cut);
    }
    let upload = written?;
    // Stored under the database lock, after checking the lease again: the result may have
    // been recorded (and its unlisted blobs removed) or the lease ended while the body
    // arrived, and a blob stored after that would be kept though no result lists it.
    let job_id = id.clone();
    with_db(c, move |_, db| {
        db.job_leased_to(&job_id, &runner_id, state::now())?;
        Ok(upload.commit()?)
    })
    .await?;
    tracing::info!(job_id = %id, sha256 = %sha, bytes = len, "output stored");
    Ok(StatusCode::NO_CONTENT)
}

/// Reads an upload's body within the upload's limits ([`UPLOAD_GRACE`], then
/// [`control::MIN_BODY_RATE`], and no byte for the coordinator's upload idle limit), handing
/// each chunk to `tx` (`None`: each is thrown away as it arrives); why it was cut, if it was.
/// Ends early, uncut, when `tx`'s receiver is gone (the writer refused: its error is the
/// answer).
async fn read_upload_body(
    c: &Shared,
    body: Body,
    tx: Option<&tokio::sync::mpsc::Sender<Bytes>>,
) -> Option<ApiError> {
    let pace = intake::Pace {
        grace: UPLOAD_GRACE,
        paced: true,
        idle: c.upload_idle,
    };
    let announced = body.size_hint().exact().unwrap_or(0);
    let mut paced = intake::Paced::new(body, pace, announced);
    loop {
        match paced.next().await {
            Err(cut) => return Some(cut),
            Ok(None) => return None,
            Ok(Some(chunk)) => {
                if let Some(tx) = tx {
                    if tx.send(chunk).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }
}

/// The body of an upload whose blob is stored already, read and thrown away within the
/// upload's limits ([`read_upload_body`]), so that its `204` reaches a client still sending
/// it; why it was cut, if it was. A client that asked for `100 Continue` has sent no body and
/// sends none: nothing is read.
async fn discard_upload(c: &Shared, headers: &HeaderMap, body: Body) -> Option<ApiError> {
    let expects_continue = header_str(headers, header::EXPECT.as_str())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    if body.is_end_stream() || expects_continue {
        return None;
    }
    read_upload_body(c, body, None).await
}

/// The record of job `id` for the admin: `404` when there is none.
async fn admin_job(c: &Shared, headers: &HeaderMap, id: &str) -> Result<state::Job, ApiError> {
    c.admin
        .check_authorization(header_str(headers, header::AUTHORIZATION.as_str()))?;
    let id = id.to_owned();
    with_db(c, move |_, db| {
        db.job(&id, state::now())?
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("job {id} not found")))
    })
    .await
}

/// `GET /v1/inventory?digest=<hex>&commit=<hex prefix>&uri=<uri, or prefix*>` (admin): the
/// artifacts of finished jobs whose provenance names the digest (as a dependency's, or as the
/// artifact's own), whose source is that commit, and which used a dependency of that uri,
/// whichever are given ([`crate::inventory`]):
/// `{"hits": [...], "cut": false, "unindexed": 0}` ([`crate::inventory::Answer`]).
async fn inventory(
    State(c): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<crate::inventory::Answer>, ApiError> {
    c.admin
        .check_authorization(header_str(&headers, header::AUTHORIZATION.as_str()))?;
    let mut query = crate::inventory::Query::default();
    for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        let slot = match &*k {
            "digest" => &mut query.digest,
            "commit" => &mut query.commit,
            "uri" => &mut query.uri,
            other => {
                return Err(ApiError::bad_request(format!(
                    "inventory: unknown parameter {other:?} (digest, commit, uri)"
                )))
            }
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(ApiError::bad_request(format!("inventory: {k} given twice")));
        }
    }
    let query = query
        .check()
        .map_err(|e| ApiError::bad_request(format!("inventory: {e}")))?;
    // On a connection of its own: a query reading many jobs holds up no runner.
    let reader = with_db(&c, |_, db| db.reopen().map_err(ApiError::from)).await?;
    let answer = tokio::task::spawn_blocking(move || crate::inventory::query(&reader, &query))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| {
            tracing::error!(error = %e, "inventory query failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)
        })?;
    Ok(Json(answer))
}

/// `GET /v1/jobs/{id}/provenance` (admin): the job's `provenance.intoto.jsonl`, as reported.
async fn provenance(
    State(c): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = admin_job(&c, &headers, &id).await?;
    let text = job.result.and_then(|r| r.provenance).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("job {id} has no provenance (not finished, or it produced none)"),
        )
    })?;
    Ok((
        // One JSON line per envelope (`.intoto.jsonl`).
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jsonl"),
        )],
        text,
    )
        .into_response())
}

/// `GET /v1/jobs/{id}/outputs/{path}` (admin): the bytes of the output the job's result lists
/// under `path`, with its sha256 in `Repr-Digest` (RFC 9530) and `ETag`.
async fn output(
    State(c): State<Shared>,
    Path((id, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = admin_job(&c, &headers, &id).await?;
    let report = job.result.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("job {id} has no result yet"))
    })?;
    let listed = report.outputs().map_err(|e| {
        tracing::error!(job_id = %id, error = %e, "a stored result lists its outputs wrongly");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the job's stored result is unreadable",
        )
    })?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("job {id} has no output {path:?} (its result lists what it has)"),
        )
    };
    let sha = listed
        .into_iter()
        .find_map(|o| (o.path == path).then_some(o.sha256))
        .ok_or_else(not_found)?;
    let (file, len) = open_blob(&c, &id, &sha).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("output {path:?} of job {id} is not stored here (removed by the operator)"),
        )
    })?;
    file_answer(file, len, "application/octet-stream", Some(&sha), &headers)
}

/// Header on a log answer: `true` for the log the result lists, `false` for the live log of
/// a job still running (which grows; ask again from its length with `Range: bytes=N-`).
pub const LOG_COMPLETE_HEADER: &str = "bulwark-log-complete";

/// `GET /v1/jobs/{id}/logs/{name}` (admin): `job.log` (text) or `egress.log` (JSON lines) as
/// the runner reported them; while the job runs, `job.log` so far ([`outputs`], "The live
/// log"). A `Range` of bytes is honoured, so a client follows a running job by asking from
/// the length it has.
async fn log(
    State(c): State<Shared>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = admin_job(&c, &headers, &id).await?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("job {id} has no log {name:?} (not finished, or it left none)"),
        )
    };
    let kind = if name == "job.log" {
        "text/plain; charset=utf-8"
    } else {
        "application/jsonl"
    };
    let Some(result) = job.result else {
        if name != "job.log" {
            return Err(not_found());
        }
        let live = {
            let (c, id) = (Arc::clone(&c), id.clone());
            tokio::task::spawn_blocking(move || c.outputs.open_live_log(&id))
                .await
                .map_err(|e| ApiError::internal(&e))??
        };
        let (file, len) = live.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("job {id} has no log (queued or nothing written yet; or lost, and what it sent was swept)"),
            )
        })?;
        let mut response = file_answer(file, len, kind, None, &headers)?;
        let h = response.headers_mut();
        h.insert(LOG_COMPLETE_HEADER, HeaderValue::from_static("false"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(response);
    };
    let log = result
        .logs
        .into_iter()
        .find(|l| l.name == name)
        .ok_or_else(not_found)?;
    let (file, len) = open_blob(&c, &id, &log.sha256)
        .await?
        .ok_or_else(not_found)?;
    let mut response = file_answer(file, len, kind, Some(&log.sha256), &headers)?;
    response
        .headers_mut()
        .insert(LOG_COMPLETE_HEADER, HeaderValue::from_static("true"));
    Ok(response)
}

/// The answer that streams a stored file: its type, its length, `nosniff` (a job's bytes
/// are the job's, never a page of the coordinator's), and for a blob (`sha`; not a live log,
/// which grows) its sha256 in `Repr-Digest` (RFC 9530) and `ETag`. Honours a `Range` of bytes
/// ([`byte_range`]).
fn file_answer(
    mut file: std::fs::File,
    len: u64,
    kind: &'static str,
    sha: Option<&str>,
    request: &HeaderMap,
) -> Result<Response, ApiError> {
    use base64::Engine;
    use std::io::Seek;
    let etag = sha.map(|sha| format!("\"sha256:{sha}\""));
    // RFC 9110 section 13.1.5: a range asked for "if the file is still this one" is only
    // honoured when it is; a growing live log never is.
    let if_range_holds = match request.get(header::IF_RANGE) {
        None => true,
        Some(v) => etag
            .as_deref()
            .is_some_and(|e| v.as_bytes() == e.as_bytes()),
    };
    let range = match byte_range(request, len).map(|r| r.filter(|_| if_range_holds)) {
        Ok(range) => range,
        Err(()) => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the range asked for is not within the file's {len} bytes"),
            )
            .into_response();
            let h = response.headers_mut();
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            return Ok(response);
        }
    };
    let (status, start, count) = match range {
        Some((first, last)) => (StatusCode::PARTIAL_CONTENT, first, last - first + 1),
        None => (StatusCode::OK, 0, len),
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .map_err(|e| ApiError::internal(&e))?;
    }
    let mut response = Body::new(FileBody::spawn(file, count)).into_response();
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    let mut extra = Vec::new();
    if let Some((first, last)) = range {
        extra.push((
            header::CONTENT_RANGE.as_str(),
            format!("bytes {first}-{last}/{len}"),
        ));
    }
    if let Some(sha) = sha {
        let raw: Vec<u8> = (0..sha.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(sha.get(i..i + 2)?, 16).ok())
            .collect();
        let digest = base64::engine::general_purpose::STANDARD.encode(raw);
        // Of the whole file, also in a partial answer (RFC 9530's representation digest).
        extra.push(("repr-digest", format!("sha-256=:{digest}:")));
        extra.extend(etag.map(|e| ("etag", e)));
    }
    for (name, value) in extra {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    Ok(response)
}

/// What a request's `Range` header asks for of a `len`-byte file (RFC 9110 section 14):
/// `Some((first, last))`, inclusive, for one range of bytes (`bytes=N-`, `bytes=N-M`, or the
/// last N with `bytes=-N`); `None` for the whole file (no header, several ranges, another
/// unit, or a header that does not parse, which RFC 9110 lets a server ignore); `Err` when
/// the range starts past the end (416).
fn byte_range(request: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = request.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = value
        .trim()
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .and_then(|_| value.trim().get(6..))
    else {
        return Ok(None);
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if first.trim().is_empty() {
        // The last `n` bytes.
        let Some(n) = number(last) else {
            return Ok(None);
        };
        if n == 0 {
            return Err(());
        }
        if len == 0 {
            // The whole of an empty file: nothing a 206 could describe.
            return Ok(None);
        }
        return Ok(Some((len.saturating_sub(n), len - 1)));
    }
    let Some(first) = number(first) else {
        return Ok(None);
    };
    let last = if last.trim().is_empty() {
        u64::MAX
    } else {
        match number(last) {
            Some(l) if l >= first => l,
            _ => return Ok(None),
        }
    };
    if first >= len {
        return Err(());
    }
    Ok(Some((first, last.min(len - 1))))
}

/// [`OutputStore::open_blob`] on the blocking pool.
async fn open_blob(
    c: &Shared,
    id: &str,
    sha: &str,
) -> Result<Option<(std::fs::File, u64)>, ApiError> {
    let (c, id, sha) = (Arc::clone(c), id.to_owned(), sha.to_owned());
    Ok(
        tokio::task::spawn_blocking(move || c.outputs.open_blob(&id, &sha))
            .await
            .map_err(|e| ApiError::internal(&e))??,
    )
}

/// A response body read from a file on the blocking pool, a chunk at a time, through a short
/// queue (so a slow client holds the reader back instead of filling memory).
#[derive(Debug)]
struct FileBody {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    len: u64,
}

impl FileBody {
    fn spawn(mut file: std::fs::File, len: u64) -> FileBody {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut left = len;
            while left > 0 {
                let mut buf = vec![0u8; 256 << 10];
                let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                let chunk = match file.read(&mut buf[..want]) {
                    Ok(0) => Err(std::io::Error::other(
                        "the stored output is shorter than it was",
                    )),
                    Ok(n) => {
                        buf.truncate(n);
                        left -= n as u64;
                        Ok(Bytes::from(buf))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = chunk.is_err();
                if tx.blocking_send(chunk).is_err() || failed {
                    return;
                }
            }
        });
        FileBody { rx, len }
    }
}

impl HttpBody for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|next| next.map(|chunk| chunk.map(http_body::Frame::data)))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

#[cfg(test)]
mod tests;
