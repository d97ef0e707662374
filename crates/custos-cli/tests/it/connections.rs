//! Connection exhaustion on the wire: slowloris clients, the global and per-source caps, and
//! an accept loop that outlives `EMFILE`, against the real binary on loopback.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use super::support::TestServer;

/// A second loopback source: Linux routes all of 127.0.0.0/8 to `lo`, so this is a different
/// client address for the per-source cap without any setup.
const OTHER_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn socket_addr(server: &TestServer) -> SocketAddr {
    server
        .addr
        .strip_prefix("http://")
        .expect("http address")
        .parse()
        .expect("socket address")
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/<pid>/fd")
        .count()
}

fn client_from(source: IpAddr) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(source)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// GET /healthz from `source`; the status and how long it took.
fn healthz(server: &TestServer, source: IpAddr) -> (u16, Duration) {
    let started = Instant::now();
    let resp = client_from(source)
        .get(format!("{}/healthz", server.addr))
        .send()
        .expect("GET /healthz answers");
    (resp.status().as_u16(), started.elapsed())
}

fn metrics(server: &TestServer) -> String {
    client_from(OTHER_SOURCE)
        .get(format!("{}/metrics", server.addr))
        .send()
        .expect("GET /metrics")
        .text()
        .expect("metrics text")
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Whether the server has closed (or reset) this connection; never blocks.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0_u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

fn count_closed(conns: &mut [TcpStream]) -> usize {
    conns
        .iter_mut()
        .map(closed_by_server)
        .filter(|c| *c)
        .count()
}

/// Polls `f` until it is true or `limit` passes; whether it became true.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn slowloris_connections_are_capped_per_source_and_timed_out() {
    let server =
        TestServer::start_with(&["--max-connections-per-ip", "50", "--header-timeout", "2s"]);
    let addr = socket_addr(&server);
    let pid = server.pid();
    let base_fds = fd_count(pid);

    let mut conns: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            // A request line that never ends. The write can fail once the server has closed
            // a refused connection; that is the point.
            let _ = s.write_all(b"GET /healthz HTT");
            s
        })
        .collect();
    let opened = Instant::now();

    // Another source is served while 127.0.0.1 holds its whole quota of half-open connections.
    let (status, latency) = healthz(&server, OTHER_SOURCE);
    assert_eq!(status, 200);
    let held_fds = fd_count(pid);
    eprintln!(
        "slowloris: /healthz from {OTHER_SOURCE} took {latency:?}; server fds {base_fds} -> {held_fds}"
    );
    assert!(
        held_fds <= base_fds + 50 + 10,
        "the per-source cap bounds what one address holds: {base_fds} -> {held_fds} descriptors"
    );

    // The server closes every one of them: refused ones at once, the rest at the header timeout.
    assert!(
        eventually(Duration::from_secs(10), || count_closed(&mut conns) == 300),
        "half-open connections still open {:?} after they were opened: {} of 300 closed",
        opened.elapsed(),
        count_closed(&mut conns)
    );
    eprintln!(
        "slowloris: all 300 closed by the server within {:?}",
        opened.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(10), || fd_count(pid) <= base_fds + 3),
        "descriptors did not drop back: {base_fds} -> {}",
        fd_count(pid)
    );

    let text = metrics(&server);
    assert_eq!(
        metric(&text, "custos_connections_refused_total{reason=\"ip_cap\"}"),
        Some(250.0),
        "{text}"
    );
    drop(conns);
}

#[test]
fn connections_over_the_global_cap_are_closed_at_once() {
    let server = TestServer::start_with(&["--max-connections", "100"]);
    let addr = socket_addr(&server);

    let mut conns: Vec<TcpStream> = (0..150)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    // The first 100 are held (the header timeout is 10 s); the other 50 are accepted and closed.
    assert!(
        eventually(Duration::from_secs(5), || count_closed(&mut conns) >= 50),
        "only {} of the 50 excess connections were closed",
        count_closed(&mut conns)
    );
    assert_eq!(
        count_closed(&mut conns),
        50,
        "connections under the cap stay open"
    );
    let text = metrics_after_close(&server, conns);
    assert_eq!(
        metric(
            &text,
            "custos_connections_refused_total{reason=\"global_cap\"}"
        ),
        Some(50.0),
        "{text}"
    );

    let (status, _) = healthz(&server, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(status, 200);
}

/// Closes `conns`, waits until the server has let go of them, and returns the metrics.
fn metrics_after_close(server: &TestServer, conns: Vec<TcpStream>) -> String {
    drop(conns);
    let mut text = String::new();
    let released = eventually(Duration::from_secs(5), || {
        text = metrics(server);
        // The metrics request's own connection is the only one left.
        metric(&text, "custos_connections_open").is_some_and(|n| n <= 1.0)
    });
    assert!(released, "connections not released: {text}");
    text
}

#[test]
fn the_accept_loop_survives_descriptor_exhaustion() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    // A cap above what the descriptor limit allows, so accept() itself hits EMFILE.
    let server = TestServer::start_with(&[
        "--max-connections",
        "1000",
        "--max-connections-per-ip",
        "1000",
    ]);
    let addr = socket_addr(&server);
    let pid = server.pid();
    let limited = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=256:256"])
        .status()
        .expect("run prlimit");
    assert!(limited.success(), "prlimit --pid {pid} failed");

    let started = Instant::now();
    let conns: Vec<TcpStream> = (0..400)
        .map(|_| TcpStream::connect(addr).expect("connect (the backlog holds the rest)"))
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || server
            .log()
            .contains("accept failed")),
        "the server never ran out of descriptors; log:\n{}",
        server.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    drop(conns);

    assert!(
        eventually(Duration::from_secs(15), || {
            client_from(OTHER_SOURCE)
                .get(format!("{}/healthz", server.addr))
                .send()
                .is_ok_and(|r| r.status().as_u16() == 200)
        }),
        "/healthz does not answer after EMFILE; log:\n{}",
        server.log()
    );
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "server exited"
    );
    // Rate-limited: at most one warning a second, however often accept() failed.
    let log = server.log();
    let warnings = log.matches("accept failed").count();
    let allowed = usize::try_from(started.elapsed().as_secs()).expect("secs") + 2;
    assert!(
        warnings <= allowed,
        "{warnings} accept warnings in {:?}:\n{log}",
        started.elapsed()
    );
}

/// Sends a request's headers at once and then its body a byte every 300 ms: what the server
/// answered (the whole response as text) and how long after the headers it did.
fn trickle_body(server: &TestServer, path: &str, token: &str) -> (String, Duration) {
    let mut stream = TcpStream::connect(socket_addr(server)).expect("connect");
    // A valid request padded with spaces: a minute to send at this pace.
    let mut body = br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{}}"#.to_vec();
    body.resize(200, b' ');
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\naccept: application/json, text/event-stream\r\n\
         content-length: {}\r\n\r\n",
        socket_addr(server),
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("headers");
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut answer = Vec::new();
    let mut buf = [0_u8; 4096];
    for byte in &body {
        // Stop trickling once the server answered or closed.
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        if stream.write_all(std::slice::from_ref(byte)).is_err() {
            break;
        }
    }
    let elapsed = started.elapsed();
    // The rest of the answer, up to the server closing the connection.
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    (String::from_utf8_lossy(&answer).into_owned(), elapsed)
}

#[test]
fn a_body_trickled_a_byte_at_a_time_gets_408_at_the_body_timeout() {
    let server = TestServer::start_with(&["--body-timeout", "2s"]);
    let token = server.admin_token.clone();
    for path in ["/mcp", "/v1/apply"] {
        let (answer, after) = trickle_body(&server, path, &token);
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "{path}: answered after {after:?}: {answer}"
        );
        assert!(
            answer.contains("request body not received in time"),
            "{path}: {answer}"
        );
        // Not before the timeout, and not much after it: the trickle would have taken a minute.
        assert!(
            after >= Duration::from_millis(1900) && after < Duration::from_secs(10),
            "{path}: answered after {after:?}"
        );
    }
    // A body that arrives in time is served as before.
    assert_eq!(healthz(&server, OTHER_SOURCE).0, 200);
    let reply = server.cli(&["get", "agents"]);
    assert!(reply.status.success());
}
