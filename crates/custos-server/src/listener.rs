//! The TCP edge: an accept loop that serves the router over HTTP/1.1 and h2c while bounding
//! what an unauthenticated peer can hold — connections in total and per source address,
//! connections that never finish their headers, connections that sit idle — survives
//! descriptor exhaustion, and drains in-flight requests on shutdown.
//!
//! Timeouts, as enforced:
//! - HTTP/1 headers: hyper's `header_read_timeout`. In hyper 1.x that timer is re-armed every
//!   time a keep-alive connection goes back to waiting for the next request head, so it also
//!   bounds how long an HTTP/1 connection may idle between requests.
//! - Everything hyper does not time: the first bytes (the auto builder reads up to the h2
//!   preface before any hyper timer runs) and h2 connections with no open stream. Our own idle
//!   timer closes a connection with no request in flight after `header_timeout` when it has
//!   never started a request, else after `idle_timeout`. A request counts as in flight until its
//!   response body has been sent, so a long streamed response is never cut.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::ServerMetrics;
use crate::metrics::RefusedReason;

/// The ceiling of the default global connection cap.
pub const DEFAULT_MAX_CONNECTIONS_CEILING: usize = 4096;
/// Descriptors kept back from the default cap for the database, upstream child processes,
/// log files and the listener itself.
pub const FD_RESERVE: usize = 256;
/// Default cap on connections from one source address.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Default time a client has to send a complete request head.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection may sit with no request in flight.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time in-flight requests get to finish on shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long the accept loop pauses after an error such as `EMFILE`, so that it neither spins
/// nor gives up while descriptors are exhausted.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most one warning of a kind per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Connection limits and timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Most connections open at once; one over it is accepted and closed at once.
    pub max_connections: usize,
    /// Most connections open at once from one source address (an IPv6 source counts per /64).
    pub max_connections_per_ip: usize,
    /// Time a client has to send a complete request head (and, for HTTP/1, the longest a
    /// keep-alive connection idles between requests).
    pub header_timeout: Duration,
    /// Time a connection (h2, or one that never started a request) may sit with no request
    /// in flight.
    pub idle_timeout: Duration,
    /// Time in-flight requests get to finish on shutdown before their connections are closed.
    pub shutdown_grace: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// The soft `RLIMIT_NOFILE` of this process, `None` when unlimited or unknown.
pub fn fd_limit() -> Option<usize> {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft != RLIM_INFINITY => usize::try_from(soft).ok(),
        _ => None,
    }
}

/// The default global cap: [`DEFAULT_MAX_CONNECTIONS_CEILING`], or fewer so that
/// [`FD_RESERVE`] descriptors stay free under the soft descriptor limit.
pub fn default_max_connections() -> usize {
    default_cap_for(fd_limit())
}

fn default_cap_for(fd_limit: Option<usize>) -> usize {
    match fd_limit {
        // With a tiny limit the reserve would leave nothing; keep half for connections.
        Some(n) => n
            .saturating_sub(FD_RESERVE)
            .max(n / 2)
            .clamp(1, DEFAULT_MAX_CONNECTIONS_CEILING),
        None => DEFAULT_MAX_CONNECTIONS_CEILING,
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish for up to [`ListenerConfig::shutdown_grace`], and returns.
///
/// Handlers see the peer address as the request extension
/// [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo).
///
/// # Errors
/// None today: accept errors are logged and retried, connection errors end that connection.
/// The `Result` leaves room for setup that can fail.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    metrics: ServerMetrics,
    config: ListenerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut http = Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    http.http2().timer(TokioTimer::new());
    let http = Arc::new(http);
    let slots = Arc::new(Slots::new(&config, metrics.clone()));
    let (stop_tx, _) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut accept_errors = RateLimited::default();
    let mut refusals = RateLimited::default();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match slots.acquire(peer.ip()) {
                    Ok(slot) => {
                        let _ = stream.set_nodelay(true);
                        tasks.spawn(serve_connection(
                            stream,
                            peer,
                            http.clone(),
                            router.clone(),
                            config,
                            stop_tx.subscribe(),
                            slot,
                        ));
                    }
                    Err(reason) => {
                        // Accept and drop: the peer sees the close at once and the backlog
                        // keeps draining, so legitimate clients still get through.
                        drop(stream);
                        metrics.connection_refused(reason);
                        if let Some(suppressed) = refusals.ready() {
                            tracing::warn!(
                                peer = %peer,
                                reason = reason.as_str(),
                                suppressed,
                                "connection refused: over the connection cap"
                            );
                        }
                    }
                },
                Err(e) if is_per_connection(&e) => {
                    // The peer went away between the handshake and accept(); nothing to wait for.
                    tracing::debug!(error = %e, "accept: connection aborted");
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM, …: back off until descriptors free up.
                    if let Some(suppressed) = accept_errors.ready() {
                        tracing::warn!(
                            error = %e,
                            suppressed,
                            open = slots.open(),
                            "accept failed; retrying"
                        );
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "a connection task panicked");
                }
            }
        }
    }

    // Stop accepting: closing the socket makes new connections fail fast instead of waiting
    // in a backlog nobody reads.
    drop(listener);
    stop_tx.send_replace(true);
    let open = tasks.len();
    if open > 0 {
        tracing::info!(connections = open, "draining connections");
    }
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            grace = ?config.shutdown_grace,
            "shutdown grace period over; closing the remaining connections"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

/// Errors that concern only the connection being accepted, not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    http: Arc<Builder<TokioExecutor>>,
    router: Router,
    config: ListenerConfig,
    mut stop: watch::Receiver<bool>,
    _slot: Slot,
) {
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let busy = activity.begin();
            let router = router.clone();
            async move {
                let resp = router.oneshot(req).await?;
                Ok::<_, std::convert::Infallible>(
                    resp.map(|body| TrackedBody { body, _busy: busy }),
                )
            }
        })
    };
    let conn = http.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    loop {
        let now = Instant::now();
        let wake = activity
            .idle_deadline(&config)
            .unwrap_or(now + config.idle_timeout);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %peer, error = %e, "connection closed with an error");
                }
                return;
            }
            _ = stop.changed(), if !draining => {
                // Idle HTTP/1 connections close now, h2 gets GOAWAY; in-flight requests finish.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if activity
                    .idle_deadline(&config)
                    .is_some_and(|d| d <= Instant::now())
                {
                    tracing::debug!(peer = %peer, "closing an idle connection");
                    return;
                }
            }
        }
    }
}

/// What one connection is doing, for the idle timer.
#[derive(Debug)]
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds from `started` to the last time a request began or a response ended.
    last_change_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last_change_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_change_ms.store(ms, Ordering::Release);
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Busy(self.clone())
    }

    /// When the connection becomes idle-expired, or `None` while a request is in flight.
    fn idle_deadline(&self, config: &ListenerConfig) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let limit = if self.requests.load(Ordering::Relaxed) == 0 {
            config.header_timeout
        } else {
            config.idle_timeout
        };
        let since =
            self.started + Duration::from_millis(self.last_change_ms.load(Ordering::Acquire));
        Some(since + limit)
    }
}

/// One request in flight, until its response body is dropped.
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The router's response body, holding its request in flight until sent.
struct TrackedBody {
    body: axum::body::Body,
    _busy: Busy,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Open connections, in total and per source.
#[derive(Debug)]
struct Slots {
    max: usize,
    max_per_source: usize,
    state: Mutex<SlotState>,
    metrics: ServerMetrics,
}

#[derive(Debug, Default)]
struct SlotState {
    open: usize,
    // INVARIANT: no entry is zero; an entry is removed when its last connection closes, so
    // the map holds at most `max` entries.
    per_source: HashMap<IpAddr, usize>,
}

impl Slots {
    fn new(config: &ListenerConfig, metrics: ServerMetrics) -> Self {
        Self {
            max: config.max_connections,
            max_per_source: config.max_connections_per_ip,
            state: Mutex::new(SlotState::default()),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open(&self) -> usize {
        self.lock().open
    }

    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, RefusedReason> {
        let source = source_key(ip);
        let mut state = self.lock();
        if state.open >= self.max {
            return Err(RefusedReason::GlobalCap);
        }
        let n = state.per_source.entry(source).or_insert(0);
        if *n >= self.max_per_source {
            if *n == 0 {
                state.per_source.remove(&source);
            }
            return Err(RefusedReason::IpCap);
        }
        *n += 1;
        state.open += 1;
        drop(state);
        self.metrics.connection_opened();
        Ok(Slot {
            slots: self.clone(),
            source,
        })
    }
}

/// One open connection's place under the caps, released on drop.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        state.open = state.open.saturating_sub(1);
        if let Some(n) = state.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                state.per_source.remove(&self.source);
            }
        }
        drop(state);
        self.slots.metrics.connection_closed();
    }
}

/// The address a per-source cap counts against: IPv4 (also when mapped into IPv6) as is,
/// IPv6 by its /64, since one host commonly holds a whole /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Lets one event through per [`LOG_INTERVAL`] and counts the ones it held back.
#[derive(Debug, Default)]
struct RateLimited {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    /// `Some(number suppressed since the last one)` when this event should be logged.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cap_keeps_a_reserve_under_the_descriptor_limit() {
        assert_eq!(default_cap_for(None), 4096);
        assert_eq!(default_cap_for(Some(1_048_576)), 4096);
        assert_eq!(default_cap_for(Some(4096)), 3840);
        assert_eq!(default_cap_for(Some(1024)), 768);
        assert_eq!(default_cap_for(Some(256)), 128);
        assert_eq!(default_cap_for(Some(1)), 1);
    }

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(
            source_key(mapped),
            "192.0.2.7".parse::<IpAddr>().expect("ip")
        );
    }

    fn slots(max: usize, per_ip: usize) -> Arc<Slots> {
        let registry_metrics = ServerMetrics::new(
            &custos_broker::BrokerMetrics::default(),
            &custos_gateway::SessionMetrics::default(),
        );
        let config = ListenerConfig {
            max_connections: max,
            max_connections_per_ip: per_ip,
            ..ListenerConfig::default()
        };
        Arc::new(Slots::new(&config, registry_metrics))
    }

    #[test]
    fn caps_refuse_and_release() {
        let slots = slots(3, 2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let a1 = slots.acquire(a).expect("a1");
        let _a2 = slots.acquire(a).expect("a2");
        assert_eq!(slots.acquire(a).err(), Some(RefusedReason::IpCap));
        let _b1 = slots.acquire(b).expect("b1");
        assert_eq!(slots.acquire(b).err(), Some(RefusedReason::GlobalCap));
        drop(a1);
        assert_eq!(slots.open(), 2);
        let _a3 = slots.acquire(a).expect("a3 after a release");
        let state = slots.lock();
        assert_eq!(state.per_source.len(), 2);
    }

    #[test]
    fn refusing_leaves_no_empty_entries() {
        let slots = slots(8, 0);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        assert_eq!(slots.acquire(a).err(), Some(RefusedReason::IpCap));
        assert!(slots.lock().per_source.is_empty());
    }

    #[test]
    fn idle_deadline_waits_for_the_response_body() {
        let config = ListenerConfig {
            header_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            ..ListenerConfig::default()
        };
        let activity = Arc::new(Activity::new());
        let first = activity.idle_deadline(&config).expect("idle");
        assert!(first <= activity.started + Duration::from_secs(2));
        let busy = activity.begin();
        assert_eq!(activity.idle_deadline(&config), None);
        drop(busy);
        let after = activity.idle_deadline(&config).expect("idle again");
        assert!(after >= activity.started + Duration::from_secs(60));
    }

    /// Serves `router` on a loopback port; the address and a trigger for shutdown.
    async fn start(
        router: Router,
        config: ListenerConfig,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let metrics = ServerMetrics::new(
            &custos_broker::BrokerMetrics::default(),
            &custos_gateway::SessionMetrics::default(),
        );
        let task = tokio::spawn(serve(tcp, router, metrics, config, async {
            let _ = rx.await;
        }));
        (addr, tx, task)
    }

    async fn get(addr: SocketAddr, path: &str) -> (String, SocketAddr) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let local = s.local_addr().expect("local");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        (out, local)
    }

    #[tokio::test]
    async fn handlers_see_the_peer_address() {
        let router = Router::new().route(
            "/peer",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                peer.to_string()
            }),
        );
        let (addr, stop, task) = start(router, ListenerConfig::default()).await;
        let (resp, local) = get(addr, "/peer").await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with(&local.to_string()), "{resp}");
        let _ = stop.send(());
        task.await.expect("join").expect("serve");
    }

    #[tokio::test]
    async fn silent_connections_are_closed_at_the_header_timeout() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let config = ListenerConfig {
            header_timeout: Duration::from_millis(300),
            ..ListenerConfig::default()
        };
        let (addr, stop, task) = start(Router::new(), config).await;
        // Nothing at all, and a partial h2 preface: neither reaches hyper's header timer.
        let silent = TcpStream::connect(addr).await.expect("connect");
        let mut preface = TcpStream::connect(addr).await.expect("connect");
        preface
            .write_all(b"PRI * HTTP/2.0\r\n")
            .await
            .expect("write");
        for mut s in [silent, preface] {
            let mut buf = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
            assert!(read.is_ok(), "the server kept a silent connection open");
        }
        let _ = stop.send(());
        task.await.expect("join").expect("serve");
    }

    #[tokio::test]
    async fn shutdown_lets_in_flight_requests_finish() {
        let router = Router::new().route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        );
        let (addr, stop, task) = start(router, ListenerConfig::default()).await;
        let request = tokio::spawn(get(addr, "/slow"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop.send(());
        let (resp, _) = request.await.expect("join");
        assert!(resp.ends_with("done"), "{resp}");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("serve returns after draining")
            .expect("join")
            .expect("serve");
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    }
}
