//! Helpers shared by the engine tests.

mod mysql;
mod pg_cluster;
mod postgres;
mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use custos_credentials::{CredentialError, PrincipalName, PrincipalPrefix};
use time::OffsetDateTime;

/// A random lease-id prefix of lowercase `[a-z0-9]`, unique to one test, so that listing
/// under it sees only that test's principals even when tests run in parallel.
pub fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let mut seed = [0_u8; 4];
    aws_lc_rs::rand::fill(&mut seed).expect("rng");
    let mixed = u64::from(u32::from_le_bytes(seed))
        ^ (u64::from(nanos) << 20)
        ^ (u64::from(std::process::id()) << 40)
        ^ N.fetch_add(1, Ordering::SeqCst);
    format!("t{}", base36(mixed % 36_u64.pow(8)))
}

fn base36(mut n: u64) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

pub fn lease(prefix: &str, n: &str) -> PrincipalName {
    PrincipalName::for_lease(&format!("{prefix}{n}")).expect("valid lease id")
}

pub fn under(prefix: &str) -> PrincipalPrefix {
    PrincipalPrefix::lease_ids_starting_with(prefix).expect("valid prefix")
}

pub fn in_minutes(m: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::minutes(m)
}

/// Asserts an error's `Display` and `Debug` hold none of `secrets` and nothing shaped like a
/// generated password (32 URL-safe characters) or a SCRAM verifier.
pub fn assert_no_secret(err: &CredentialError, secrets: &[&str]) {
    for text in [err.to_string(), format!("{err:?}")] {
        for secret in secrets {
            assert!(!text.contains(secret), "secret in error: {text}");
        }
        assert!(
            !text.contains("SCRAM-SHA-256$"),
            "verifier in error: {text}"
        );
        let run = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .find(|w| w.len() >= 32 && w.chars().any(|c| c.is_ascii_uppercase()));
        assert!(run.is_none(), "password-shaped text in error: {text}");
    }
}

/// Everything logged at any level while the guard lives (current-thread tests only).
pub struct CapturedLogs {
    from: usize,
}

/// Every log line of this test process, at TRACE. One global subscriber, installed once: a
/// per-thread one (`set_default`) races tracing's per-callsite interest cache when tests run
/// in parallel and can miss lines.
fn log_buffer() -> &'static std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static BUFFER: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    BUFFER.get_or_init(|| {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Writer(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buffer
    })
}

impl CapturedLogs {
    /// Captures from now on (lines of tests running alongside included: each test looks for
    /// its own principal and password, which no other test has).
    pub fn start() -> Self {
        let from = log_buffer().lock().expect("lock").len();
        Self { from }
    }

    pub fn text(&self) -> String {
        let buffer = log_buffer().lock().expect("lock");
        String::from_utf8_lossy(&buffer[self.from.min(buffer.len())..]).into_owned()
    }
}

struct Writer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
