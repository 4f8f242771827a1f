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
//!    window and that the runner is registered and active, and on a route whose body may be
//!    larger than [`MAX_SMALL_BODY_BYTES`] (the result report, the live log) the signature
//!    too, over the body's sha256 the request names in
//!    [`bulwark_protocol::control::headers::CONTENT_SHA256`], and that its nonce was not used
//!    ([`auth::check_before_body`]); such a request naming none is refused (an old runner:
//!    upgrade it), and so is a lease naming none ([`Gate::RunnerNamingDigest`]: an old runner
//!    is stopped before it takes a job whose result it could not report);
//! 2. a `Content-Length` over the route's **limit** is refused (`413`, naming the limit);
//!    a chunked body is refused as soon as it passes the limit;
//! 3. a body that may be larger than [`MAX_SMALL_BODY_BYTES`] waits for room in its runner's
//!    **share** and in the **budget** of such bodies being read at once ([`BodyBudget`]: its
//!    `Content-Length`, or the route's limit for a chunked body), held until the handler is
//!    done with it; one that finds none within [`LARGE_BODY_WAIT`] is answered `503` unread
//!    (the daemon sends it again);
//! 4. the body is read within its **deadline** (`408`): a small route's fixed one; for a
//!    larger body the small routes' deadline and then its length at
//!    [`bulwark_protocol::control::MIN_BODY_RATE`], cut as soon as it falls behind that rate
//!    ([`Pace`]), so that a body is never waited for without end, whatever layer is around
//!    the route, and a slow one no longer than what it declared needs;
//! 5. the handler runs on the buffered bytes and makes the full check (the body held to the
//!    digest it named, the signature over the body, the nonce, the runner's standing under the
//!    database lock) as before, judging the timestamp against when the head arrived
//!    ([`Arrived`]), as the gate did: the time spent in 3 and 4 does not count against the
//!    runner's clock.
//!
//! A refusal in 1, 2 or 3 is made before the coordinator reads the body: hyper reads the
//! connection in blocks, so the block that ended the headers may hold the body's first bytes
//! (its read buffer, 8 KiB at first and never more than about 400 KiB), but nothing more is
//! read to decide. The refusal is then answered after the body is read and thrown away, for at
//! most [`REFUSED_BODY_DRAIN`] and the route's limit ([`refuse_early`]), and the connection closed.
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
//! - Checking the signature of the small routes before the body as well: a runner's most
//!   frequent requests (lease polls, heartbeats) would pay a second ECDSA verification, to
//!   protect 64 KiB bodies that must arrive within 15 s anyway.
//! - Passing the gate's verified signature on to the handler, so that it is checked once:
//!   the full check would then trust state carried between two layers; checking it again
//!   costs a third of a millisecond per large request.
//! - Recording the nonce at the gate: the full check records it under the same lock as it
//!   reads the runner's standing, and stays the one place that does. The gate reads it, and
//!   holds a large body's nonce in memory while that body is received ([`NoncesInFlight`]),
//!   so a copy of a genuine request's headers is refused before its body while the original
//!   is in flight, and after it was served; only copies of a head never served pass, one at
//!   a time.
//! - Closing the connection at once on an early refusal, the body unread: the kernel then
//!   resets the connection, and a client still sending (every HTTP/1.1 client sends its body
//!   before reading the answer) sees the reset, not the refusal; the daemon takes a reset for
//!   a transient failure and retries, and the message saying what is wrong is lost.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
#[cfg(doc)]
use bulwark_protocol::control::MAX_BODY_BYTES;
use bulwark_protocol::control::{body_allowance, MIN_BODY_RATE};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{header_str, request_target, ApiError, Shared};
use crate::auth::{self, AuthError, SignedHeaders};
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

/// How long the body of a request refused before it was read is read and thrown away before
/// the refusal is answered (`refuse_early`): a runner sends its body (at most a few MiB)
/// from memory, in well under this on any link it can report over.
pub const REFUSED_BODY_DRAIN: Duration = Duration::from_secs(2);

/// The default of [`super::ServeOptions::large_body_budget`]: sixteen result reports of the
/// largest size, or sixty-four live-log appends of the largest, read at once.
pub const DEFAULT_LARGE_BODY_BUDGET: usize = 128 << 20;

/// The default of [`super::ServeOptions::large_body_share`]: the most bytes of one runner's
/// large bodies read at once, two result reports of the largest size (a result while a
/// retry of it, or several live-log appends of a runner with many slots, are still in flight).
/// An eighth of [`DEFAULT_LARGE_BODY_BUDGET`]: a runner whose key was stolen holds at most
/// that, and eight runners can each hold all of theirs at once.
pub const DEFAULT_LARGE_BODY_SHARE: usize = 2 * bulwark_protocol::control::MAX_BODY_BYTES;

/// The default of [`super::ServeOptions::large_body_wait`]: how long a large body waits for
/// room in the [`BodyBudget`] before it is answered `503` unread. Below the 30 s a runner's
/// daemon gives a request (its `REQUEST_TIMEOUT`), with room for the drain and the answer:
/// the daemon then hears the `503`, takes it for a transient failure and sends the request
/// again (signed afresh), rather than giving up on a request that is still queued here.
pub const LARGE_BODY_WAIT: Duration = Duration::from_secs(20);

/// Who may send a body to a route, checked on the headers alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Anyone (registration: its token is in the body).
    Open,
    /// The admin token (`Authorization: Bearer`).
    Admin,
    /// A signed runner request ([`auth::check_before_body`]), naming its body's digest
    /// ([`bulwark_protocol::control::headers::CONTENT_SHA256`]) if it likes, unless its body
    /// may be large.
    Runner,
    /// A signed runner request that must name its body's digest, whatever the body's size:
    /// the lease, so that a runner too old to send the digest is refused (saying to upgrade
    /// it) before it takes a job, not when it reports the job it ran. The digest is not
    /// checked against the signature before the body (the lease's body is empty): a lease
    /// poll pays one signature verification, as before.
    RunnerNamingDigest,
}

/// What a route's body must pass: the gate, the most bytes read, and how long they may take.
#[derive(Debug, Clone, Copy)]
pub struct Intake {
    /// Checked before the body.
    pub gate: Gate,
    /// The most bytes of body read.
    pub limit: usize,
    /// How long the body may take once the gate passed (and, for a large body, once it had
    /// room in the budget).
    pub deadline: Duration,
}

impl Intake {
    /// Whether the route's body may be larger than [`MAX_SMALL_BODY_BYTES`]: then a runner's
    /// signature is checked before it, and it is read within the [`BodyBudget`].
    fn is_large(&self) -> bool {
        self.limit > MAX_SMALL_BODY_BYTES
    }
}

/// Room for the bodies larger than [`MAX_SMALL_BODY_BYTES`] being read at once, in bytes,
/// shared by every route. A body waits for its room before it is read (beyond hyper's buffer; at most the
/// budget's wait, then `503`) and gives it back when its handler is done. Only requests that
/// passed the gate wait here: what a client holding no credential can make the coordinator
/// hold is bounded by the gate, what the runners can, by this.
///
/// Each runner (by the id whose signature the gate verified) also has a **share**: the most
/// bytes of its bodies that hold room at once ([`DEFAULT_LARGE_BODY_SHARE`]). A runner's body
/// first waits for room in its own share, then in the budget, both within the one wait: a
/// runner over its share holds none of the budget while it waits, so a runner whose key was
/// stolen keeps at most its share busy and the other runners' bodies are read as before.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    room: Arc<Semaphore>,
    total: u32,
    share: u32,
    shares: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    wait: Duration,
}

/// Room held for one body: in its runner's share and in the budget, given back when dropped.
#[derive(Debug)]
pub struct Room {
    // Dropped in this order: the budget's room first, then the share (and its entry).
    _room: OwnedSemaphorePermit,
    _share: Option<Share>,
}

/// Bytes of one runner's share, given back when dropped; the runner's entry is removed once
/// nothing of its share is held or waited for, so the map holds only runners with a body in
/// flight.
#[derive(Debug)]
struct Share {
    permit: Option<OwnedSemaphorePermit>,
    runner: String,
    shares: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl Drop for Share {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the map holds it: no body of this runner holds or waits for its share (a
        // waiter holds a clone, taken under this lock).
        if shares
            .get(&self.runner)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            shares.remove(&self.runner);
        }
    }
}

impl BodyBudget {
    /// A budget of `bytes` (at least 1, at most 4 GiB), of which one runner's bodies hold at
    /// most `share` (at least 1, at most the budget), for which a body waits at most `wait`.
    /// A body announcing more than the whole budget (or share) waits for all of it.
    pub fn new(bytes: usize, share: usize, wait: Duration) -> BodyBudget {
        let total = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
        let share = u32::try_from(share.max(1)).unwrap_or(u32::MAX).min(total);
        BodyBudget {
            room: Arc::new(Semaphore::new(total as usize)),
            total,
            share,
            shares: Arc::default(),
            wait,
        }
    }

    /// The budget `options` set (`large_body_budget`, `large_body_share`, `large_body_wait`).
    pub fn for_options(options: &super::ServeOptions) -> BodyBudget {
        BodyBudget::new(
            options.large_body_budget,
            options.large_body_share,
            options.large_body_wait,
        )
    }

    /// All of the budget, held until the permit is dropped: a test's way to keep it busy.
    #[cfg(test)]
    pub fn take_all(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.room)
            .try_acquire_many_owned(self.total)
            .expect("the budget is free")
    }

    /// How many runners have a body holding or waiting for room in their share.
    #[cfg(test)]
    pub fn runners_in_flight(&self) -> usize {
        self.shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Waits for room for `bytes` (a body larger than the whole budget takes all of it), in
    /// `runner`'s share first when the body is a runner's, at most the budget's wait: then
    /// `503`, which a runner's daemon sends again.
    async fn reserve(&self, bytes: u64, runner: Option<&str>) -> Result<Option<Room>, ApiError> {
        let n = u32::try_from(bytes).unwrap_or(u32::MAX).min(self.total);
        if n == 0 {
            return Ok(None);
        }
        let mut share = runner.map(|runner| {
            let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
            let semaphore = shares
                .entry(runner.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.share as usize)));
            (
                Arc::clone(semaphore),
                Share {
                    permit: None,
                    runner: runner.to_owned(),
                    shares: Arc::clone(&self.shares),
                },
            )
        });
        let mut in_share = share.is_some();
        let reserved = tokio::time::timeout(self.wait, async {
            // The semaphores are never closed.
            if let Some((semaphore, guard)) = &mut share {
                let own = Arc::clone(semaphore).acquire_many_owned(n.min(self.share));
                guard.permit = own.await.ok();
            }
            in_share = false;
            Arc::clone(&self.room).acquire_many_owned(n).await.ok()
        })
        .await;
        match reserved {
            Ok(room) => Ok(room.map(|room| Room {
                _room: room,
                _share: share.map(|(_, guard)| guard),
            })),
            Err(_) if in_share => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "request body not read: this runner's other large bodies being read take \
                     its whole share of the coordinator's room ({} bytes) for more than {} s; \
                     send it again",
                    self.share,
                    self.wait.as_secs()
                ),
            )),
            Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "request body not read: the coordinator had no room for it within {} s \
                     (other large bodies are being read); send it again",
                    self.wait.as_secs()
                ),
            )),
        }
    }
}

/// The nonces of the large bodies (a result, a live-log append) whose gate passed and whose
/// handler is not done, by runner: held from the gate until the handler returns, given back
/// when dropped.
///
/// The gate verifies a large body's signature and that its nonce was not recorded, but only
/// the full check, after the body, records it. Without this set, copies of one genuine head
/// (taken from a log that records headers) sent while the original is read would each pass
/// the gate and hold room in that runner's share for their body's time, filling it. With it,
/// a head is read at most once at a time. A copy refused here is answered `503` (send it
/// again), not `401`: when a copy comes first, the request refused is the runner's own, and
/// a daemon does not retry a `401` (its job would be lost) but sends a `503`'s request again,
/// signed afresh. Small bodies are not held: their signature is checked only after the body,
/// so a forged head could block a genuine nonce, and they hold no share.
#[derive(Debug, Default)]
pub struct NoncesInFlight(Arc<Mutex<std::collections::HashSet<(String, String)>>>);

/// A nonce held in [`NoncesInFlight`], given back when dropped.
#[derive(Debug)]
pub struct NonceHeld {
    key: (String, String),
    set: Arc<Mutex<std::collections::HashSet<(String, String)>>>,
}

impl Drop for NonceHeld {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl NoncesInFlight {
    /// Holds `runner`'s `nonce` until the returned guard is dropped; `503` when a request
    /// with it is being received already.
    fn hold(&self, runner: &str, nonce: &str) -> Result<NonceHeld, ApiError> {
        let key = (runner.to_owned(), nonce.to_owned());
        let mut set = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !set.insert(key.clone()) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request body not read: a request with this nonce is being received already \
                 (a copy of its headers); send it again, signed afresh",
            ));
        }
        Ok(NonceHeld {
            key,
            set: Arc::clone(&self.0),
        })
    }
}

/// When a request's head arrived (seconds since the epoch): recorded by [`admit`] before the
/// gate, and read by the handler, whose full check of a signed request judges its timestamp
/// against it ([`auth::RequestTime`]), as the gate did. A request that did not pass through
/// [`admit`] is taken to have arrived when this is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrived(pub u64);

impl<S: Send + Sync> FromRequestParts<S> for Arrived {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Arrived>()
            .copied()
            .unwrap_or_else(|| Arrived(state::now())))
    }
}

/// `route` with `intake` applied: [`admit`] before the handler, and axum's own body limit set
/// to the same, so the buffered body passes the handler's extractor unchanged.
pub fn with_intake(
    route: MethodRouter<Shared>,
    c: &Shared,
    budget: &BodyBudget,
    intake: Intake,
) -> MethodRouter<Shared> {
    route
        .layer(DefaultBodyLimit::max(intake.limit))
        // Only for the route's own methods: another method is answered `405` as before.
        .route_layer(axum::middleware::from_fn_with_state(
            (Arc::clone(c), intake, budget.clone()),
            admit,
        ))
}

/// The message of a `413` for a body over `limit`.
pub fn too_large(limit: usize) -> String {
    format!("request body is larger than {limit} bytes")
}

fn over_limit(limit: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, too_large(limit))
}

/// Checks the gate and the announced length, then waits for room in the budget for a large
/// body, then reads the body within the limit and the deadline, then runs the handler on it.
async fn admit(
    State((c, intake, budget)): State<(Shared, Intake, BodyBudget)>,
    request: Request,
    next: Next,
) -> Response {
    let arrived = state::now();
    let (mut parts, body) = request.into_parts();
    let signer = match check_gate(&c, intake, &parts, arrived).await {
        Err(e) => Err(e),
        // The body's lower size bound is its `Content-Length` (hyper refused a malformed one
        // already), and 0 for a chunked body.
        Ok(_) if body.size_hint().lower() > intake.limit as u64 => Err(over_limit(intake.limit)),
        Ok(signer) => Ok(signer),
    };
    // A large body's nonce is held from here until its handler is done: a copy of its head
    // sent meanwhile is refused before its body, holding no room.
    let signer = signer.and_then(|signer| match signer {
        Some((runner, nonce)) if intake.is_large() => {
            let held = c.nonces_in_flight.hold(&runner, &nonce)?;
            Ok((Some(runner), Some(held)))
        }
        Some((runner, _)) => Ok((Some(runner), None)),
        None => Ok((None, None)),
    });
    let (runner, _nonce) = match signer {
        Ok(signer) => signer,
        Err(e) => return refuse_early(e, &parts.headers, body, intake.limit).await,
    };
    // What the body may be, by its `Content-Length`, or the route's limit when chunked.
    let announced = body
        .size_hint()
        .exact()
        .unwrap_or(intake.limit as u64)
        .min(intake.limit as u64);
    // Held until the handler is done with the bytes. A body that found no room is answered
    // as a refusal before its body: nothing of it was read.
    let _room = if intake.is_large() {
        match budget.reserve(announced, runner.as_deref()).await {
            Ok(room) => room,
            Err(e) => return refuse_early(e, &parts.headers, body, intake.limit).await,
        }
    } else {
        None
    };
    let pending = !body.is_end_stream();
    parts.extensions.insert(Arrived(arrived));
    // A large body is paced: its route's deadline, then its length at the minimum rate.
    // Paced or not, no byte for the route's deadline cuts it.
    let pace = Pace {
        grace: intake.deadline,
        paced: intake.is_large(),
        idle: intake.deadline,
    };
    match read_body(body, intake.limit, pace).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        // The rest of the body may still be coming: the connection is closed.
        Err(e) if pending => closing(e.into_response()),
        Err(e) => e.into_response(),
    }
}

/// `response` with `Connection: close`.
pub(super) fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The answer to a request refused before its body was read. A body still to come is first
/// read and thrown away (never kept), for at most [`REFUSED_BODY_DRAIN`] and `limit` bytes, and the
/// connection is then closed: closed with the body unread, the kernel would reset it, and a
/// client still sending would see the reset rather than the refusal. A client that asked for
/// `100 Continue` has sent no body and sends none: there is nothing to read.
pub(super) async fn refuse_early(
    e: ApiError,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Response {
    if body.is_end_stream() {
        return e.into_response();
    }
    let expects_continue = header_str(headers, header::EXPECT.as_str())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    if !expects_continue {
        discard(body, limit, REFUSED_BODY_DRAIN).await;
    }
    closing(e.into_response())
}

/// Reads `body` and drops each chunk as it arrives, until it ends, more than `most` bytes came,
/// an error, or `within` passed.
async fn discard(mut body: Body, most: usize, within: Duration) {
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) =
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            if let Ok(data) = frame.into_data() {
                seen = seen.saturating_add(data.len());
                if seen > most {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(within, drain).await;
}

/// The gate's check on the request's headers and target, its head having arrived at
/// `arrived`; for a runner's request, the runner it names (whose signature verified, when
/// its body may be large) and its nonce.
async fn check_gate(
    c: &Shared,
    intake: Intake,
    parts: &Parts,
    arrived: u64,
) -> Result<Option<(String, String)>, ApiError> {
    match intake.gate {
        Gate::Open => Ok(None),
        Gate::Admin => {
            c.admin
                .check_authorization(header_str(&parts.headers, header::AUTHORIZATION.as_str()))?;
            Ok(None)
        }
        Gate::Runner | Gate::RunnerNamingDigest => {
            let get = |name| header_str(&parts.headers, name);
            let signed = SignedHeaders::read(get)?;
            let digest = auth::read_body_digest(get)?;
            // A request that names no digest comes from an older runner: refused where the
            // digest is needed (a large body) or where refusing it early spares a job (the
            // lease).
            let required = intake.is_large() || intake.gate == Gate::RunnerNamingDigest;
            if required && digest.is_none() {
                return Err(AuthError::BodyDigestMissing.into());
            }
            // A body that may be large is read only once the signature verified, against the
            // digest the request names.
            let digest = digest.filter(|_| intake.is_large());
            let method = parts.method.clone();
            let target = request_target(&parts.uri);
            let c = Arc::clone(c);
            // The runner's key may have to be read from the database (the first time a runner
            // is seen, or for one that is not registered), and a signature takes a third of a
            // millisecond: off the event loop.
            tokio::task::spawn_blocking(move || {
                auth::check_before_body(
                    &c.db,
                    &c.runner_keys,
                    method.as_str(),
                    &target,
                    &signed,
                    digest.as_deref(),
                    arrived,
                )
                .map(|()| (signed.runner_id, signed.nonce))
            })
            .await
            .map_err(|e| ApiError::internal(&e))?
            .map(Some)
            .map_err(ApiError::from)
        }
    }
}

/// How long a body may take: its route's deadline (`grace`), and when `paced`, its length at
/// [`MIN_BODY_RATE`] on top. A paced body is cut as soon as it falls behind that rate: at any
/// moment, what arrived must be what the rate carries in the time since `grace` ran out.
/// So a body is never cut while it arrives at the rate, nor is a client that declared 8 MiB
/// and sends a byte now and then kept for the whole allowance of 8 MiB.
///
/// Whatever its pace, a body is also cut when no byte of it came for `idle`: a body sent fast
/// and then stalled would otherwise be kept (with its memory, its share and its room in the
/// budget) for all the time the bytes it already sent earned it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    /// Before the rate applies.
    pub grace: Duration,
    /// Whether the rate applies at all (or only `grace`).
    pub paced: bool,
    /// The longest a body may go without a byte arriving.
    pub idle: Duration,
}

impl Pace {
    /// When a body that started at `start` and has `got` bytes is behind.
    pub fn cut_at(&self, start: tokio::time::Instant, got: u64) -> tokio::time::Instant {
        if !self.paced {
            return start + self.grace;
        }
        // `got / rate` in whole milliseconds, exact enough and free of floats.
        let carried = Duration::from_millis(got.saturating_mul(1000) / MIN_BODY_RATE);
        start + self.grace + carried
    }

    /// When a body whose last byte came at `last` (or which started then) has idled too long.
    pub fn idle_at(&self, last: tokio::time::Instant) -> tokio::time::Instant {
        last + self.idle
    }

    /// The refusal of a body that idled too long.
    pub fn too_idle(&self) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received in time: no byte for {} s",
                self.idle.as_secs()
            ),
        )
    }

    /// The refusal of a body that fell behind, `announced` bytes long.
    pub fn too_slow(&self, announced: u64) -> ApiError {
        let message = if self.paced {
            format!(
                "request body not received in time: slower than {} KiB/s after its first {} s \
                 (at most {} s for its {announced} bytes)",
                MIN_BODY_RATE >> 10,
                self.grace.as_secs(),
                (self.grace + body_allowance(announced)).as_secs()
            )
        } else {
            format!(
                "request body not received in time (at most {} s)",
                self.grace.as_secs()
            )
        };
        ApiError::new(StatusCode::REQUEST_TIMEOUT, message)
    }
}

/// A body read chunk by chunk at a [`Pace`]: each chunk as it arrives, or why the body was
/// cut (it idled, or fell behind the rate; `announced` bytes long, for the message).
pub(super) struct Paced {
    body: Body,
    pace: Pace,
    announced: u64,
    start: tokio::time::Instant,
    last: tokio::time::Instant,
    got: u64,
}

impl Paced {
    /// Starts reading `body` now.
    pub fn new(body: Body, pace: Pace, announced: u64) -> Paced {
        let start = tokio::time::Instant::now();
        Paced {
            body,
            pace,
            announced,
            start,
            last: start,
            got: 0,
        }
    }

    /// The next chunk of data (`None` at the body's end), or the refusal of a body that
    /// idled or fell behind, or could not be read.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            let behind = self.pace.cut_at(self.start, self.got);
            let idle = self.pace.idle_at(self.last);
            let body = &mut self.body;
            let next = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
            let frame = match tokio::time::timeout_at(behind.min(idle), next).await {
                Err(_) if idle < behind => return Err(self.pace.too_idle()),
                Err(_) => return Err(self.pace.too_slow(self.announced)),
                Ok(None) => return Ok(None),
                Ok(Some(frame)) => {
                    frame.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?
                }
            };
            // Trailers and other frames carry no data: read on.
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    self.last = tokio::time::Instant::now();
                }
                self.got = self.got.saturating_add(data.len() as u64);
                return Ok(Some(data));
            }
        }
    }
}

/// Reads `body` whole: at most `limit` bytes, at the `pace` asked. Memory grows with what
/// arrives, never with what is announced.
async fn read_body(body: Body, limit: usize, pace: Pace) -> Result<Bytes, ApiError> {
    let announced = body
        .size_hint()
        .exact()
        .unwrap_or(limit as u64)
        .min(limit as u64);
    let mut paced = Paced::new(body, pace, announced);
    let mut got = Vec::new();
    while let Some(data) = paced.next().await? {
        if got.len() + data.len() > limit {
            return Err(over_limit(limit));
        }
        got.extend_from_slice(&data);
    }
    Ok(Bytes::from(got))
}
