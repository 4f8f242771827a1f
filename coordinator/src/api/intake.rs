//! What a request with a body must show before its body is read, and how much of a body is
//! read (docs/control-plane.md, "Request bodies").
//!
//! # Why
//!
//! The handlers take their body as [`Bytes`], which axum buffers whole before the handler
//! runs, and authentication (the admin token, a runner's signature over the body) happens in
//! the handler. With one 8 MiB limit for every route, a client holding no credential could
//! make the coordinator buffer 8 MiB per connection and keep it for the request deadline:
//! 512 connections, 4 GiB, and no connection left for the runners.
//!
//! # How
//!
//! Every route that reads a body goes through [`admit`] with its [`Intake`]:
//!
//! 1. the **gate**, on the headers alone: the admin token for admin routes; for a signed
//!    runner route the signing headers' presence and shape, the target, the timestamp's
//!    window and that the runner is registered and active ([`auth::check_before_body`]).
//!    A refusal is the status and JSON the full check would give, sent before a byte of the
//!    body is read (the connection is then closed: its body is never read);
//! 2. a `Content-Length` over the route's **limit** is refused (`413`, naming the limit)
//!    before a byte is read; a chunked body is refused as soon as it passes the limit;
//! 3. the body is read within the route's **deadline** (`408`), if it has one of its own
//!    (the small routes do; the others have the request deadline of
//!    [`super::ServeOptions::request_timeout`]);
//! 4. the handler runs on the buffered bytes and makes the full check (the signature over
//!    the body, the nonce, the runner's standing under the database lock) as before.
//!
//! Only the result report keeps [`MAX_BODY_BYTES`]; the live log and output uploads have
//! limits of their own; everything else is small ([`MAX_SMALL_BODY_BYTES`], and
//! [`MAX_SUBMIT_BODY_BYTES`] for a job submission, which carries a spec).
//!
//! # Alternatives rejected
//!
//! - Authenticating in each handler before reading: the body extractor runs before the
//!   handler's code, and taking the raw body in every handler would spread the limit and the
//!   error mapping over all of them.
//! - Verifying the signature before the body: it covers the body's hash (only output uploads
//!   name it in their path, and those are checked whole before their body:
//!   [`super::upload_blob`]).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
#[cfg(doc)]
use bulwark_protocol::control::MAX_BODY_BYTES;

use super::{header_str, request_target, ApiError, Shared};
use crate::auth::{self, SignedHeaders};
use crate::state;

/// The largest body of every route but the result report, a job submission, the live log and
/// output uploads: registration (a token, a name and a public key PEM: under 1 KiB), rekey (a
/// public key and a proof), an identity-token request (an audience), lease and heartbeat (an
/// empty body).
pub const MAX_SMALL_BODY_BYTES: usize = 64 << 10;

/// The largest job submission (`POST /v1/jobs`, admin): `{spec, trust}`. A runner takes a spec
/// of at most 1 MiB as the pretty JSON its daemon writes for `bulwark run` (the runner's
/// `MAX_SPEC_BYTES`); the same spec sent compact is smaller. Twice that leaves room for a
/// submitter's own whitespace and escapes.
pub const MAX_SUBMIT_BODY_BYTES: usize = 2 << 20;

/// How long the body of a small route may take to arrive, once its headers passed the gate
/// (64 KiB in this time is 4 KiB/s: any runner manages it).
pub const SMALL_BODY_TIMEOUT: Duration = Duration::from_secs(15);

/// Who may send a body to a route, checked on the headers alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Anyone (registration: its token is in the body).
    Open,
    /// The admin token (`Authorization: Bearer`).
    Admin,
    /// A signed runner request ([`auth::check_before_body`]).
    Runner,
}

/// What a route's body must pass: the gate, the most bytes read, and how long they may take
/// (`None`: the request deadline only).
#[derive(Debug, Clone, Copy)]
pub struct Intake {
    /// Checked before the body.
    pub gate: Gate,
    /// The most bytes of body read.
    pub limit: usize,
    /// How long the body may take once the gate passed.
    pub deadline: Option<Duration>,
}

/// `route` with `intake` applied: [`admit`] before the handler, and axum's own body limit set
/// to the same, so the buffered body passes the handler's extractor unchanged.
pub fn with_intake(
    route: MethodRouter<Shared>,
    c: &Shared,
    intake: Intake,
) -> MethodRouter<Shared> {
    route
        .layer(DefaultBodyLimit::max(intake.limit))
        // Only for the route's own methods: another method is answered `405` as before.
        .route_layer(axum::middleware::from_fn_with_state(
            (Arc::clone(c), intake),
            admit,
        ))
}

/// The message of a `413` for a body over `limit`.
pub fn too_large(limit: usize) -> String {
    format!("request body is larger than {limit} bytes")
}

/// Checks the gate, then reads the body within the limit and the deadline, then runs the
/// handler on it. A refusal while the body may still be coming closes the connection.
async fn admit(
    State((c, intake)): State<(Shared, Intake)>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let pending = !body.is_end_stream();
    let refuse = |e: ApiError| {
        let mut response = e.into_response();
        if pending {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    };
    if let Err(e) = check_gate(&c, intake.gate, &parts).await {
        return refuse(e);
    }
    match read_body(body, intake.limit, intake.deadline).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => refuse(e),
    }
}

/// The gate's check on the request's headers and target.
async fn check_gate(
    c: &Shared,
    gate: Gate,
    parts: &axum::http::request::Parts,
) -> Result<(), ApiError> {
    match gate {
        Gate::Open => Ok(()),
        Gate::Admin => Ok(c
            .admin
            .check_authorization(header_str(&parts.headers, header::AUTHORIZATION.as_str()))?),
        Gate::Runner => {
            let signed = SignedHeaders::read(|name| header_str(&parts.headers, name))?;
            let target = request_target(&parts.uri);
            let c = Arc::clone(c);
            // The runner's key may have to be read from the database (the first time a runner
            // is seen, or for one that is not registered): off the event loop.
            tokio::task::spawn_blocking(move || {
                auth::check_before_body(&c.db, &c.runner_keys, &target, &signed, state::now())
            })
            .await
            .map_err(|e| ApiError::internal(&e))??;
            Ok(())
        }
    }
}

/// Reads `body` whole: at most `limit` bytes (a larger `Content-Length` is refused before a
/// byte is read), within `deadline` when there is one. Memory grows with what arrives, never
/// with what is announced.
async fn read_body(
    mut body: Body,
    limit: usize,
    deadline: Option<Duration>,
) -> Result<Bytes, ApiError> {
    let over = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, too_large(limit));
    // The body's lower size bound is its `Content-Length` (hyper refused a malformed one
    // already), and 0 for a chunked body.
    if body.size_hint().lower() > limit as u64 {
        return Err(over());
    }
    let read = async {
        let mut got = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame =
                frame.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if got.len() + data.len() > limit {
                    return Err(over());
                }
                got.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(got))
    };
    match deadline {
        None => read.await,
        Some(d) => tokio::time::timeout(d, read).await.map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received in time (at most {} s)",
                    d.as_secs()
                ),
            )
        })?,
    }
}
