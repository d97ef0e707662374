//! Starting Custos: data directory, keys, broker (which opens the store and the audit log),
//! gateway, listener, shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use custos_broker::{Broker, BrokerConfig, Durability};
use custos_core::{Clock, Role, SystemClock};
use custos_crypto::{AgentKey, ServerKey, TokenIssuer};
use custos_gateway::{McpGateway, UpstreamPool};

use crate::listener::{self, ListenerConfig};
use crate::{AppState, ServerMetrics, router};

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where keys, the SQLite database and `admin.token` live.
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The URL agents and clients use to reach this server (default `http://<listen>`).
    pub public_url: Option<String>,
    /// `postgres://…` or `sqlite:…`; default SQLite in the data directory.
    pub database_url: Option<String>,
    /// SQLite durability.
    pub durability: Durability,
    /// Development mode: allowed only on a loopback address.
    pub dev: bool,
    /// How long failed authentications are summed per audit record.
    pub auth_failure_window: Duration,
    /// Failures per source and window past which its requests get 429 unchecked.
    pub auth_failure_limit: u64,
    /// Most connections open at once; `None`: [`listener::default_max_connections`]
    /// (4096, or fewer to keep descriptors free under the process's limit).
    pub max_connections: Option<usize>,
    /// Most connections open at once from one source address (an IPv6 source counts per /64);
    /// default [`listener::DEFAULT_MAX_CONNECTIONS_PER_IP`].
    pub max_connections_per_ip: usize,
    /// Time a client has to send a request's headers, which is also the longest an HTTP/1
    /// keep-alive connection idles; default [`listener::DEFAULT_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once its headers are in; default
    /// [`DEFAULT_BODY_TIMEOUT`].
    pub body_timeout: Duration,
    /// Whether the lease reconciler runs (at start and periodically); `false` is
    /// `--no-revoke-on-start`, the safe mode after restoring the store from a backup.
    pub revoke_on_start: bool,
    /// Where credential roles' `connection_env` variables are read: the process environment,
    /// or (tests) anything else.
    pub credential_env: custos_broker::CredentialEnv,
    /// Held calls and approvals: the hold, the approvals' lifetime, separation of duties.
    pub approvals: custos_broker::ApprovalConfig,
    /// Where approval requests and answers are POSTed, if anywhere.
    pub approval_webhook: Option<crate::webhook::WebhookConfig>,
    /// Apply the default tier bundle ([`DEFAULT_BUNDLE`]) on first start (`--dev` without
    /// `--empty`): only while the registry has never been changed.
    pub default_bundle: bool,
    /// How upstream tool definitions are pinned; `None`: first use with `--dev`, operator
    /// approval otherwise.
    pub tool_pinning: Option<custos_broker::PinMode>,
    /// A file holding the key-encryption key static secrets are sealed under (base64 of 32
    /// bytes); `CUSTOS_KEK` in the environment wins; with `--dev` and neither,
    /// `<data-dir>/kek.key`, generated on first start.
    pub kek_file: Option<PathBuf>,
}

/// `examples/tiers.yaml`: the four tiers over the reference MCP servers, a template per
/// agent archetype.
pub const DEFAULT_BUNDLE: &str = include_str!("../../../examples/tiers.yaml");

impl ServeConfig {
    /// `serve --dev` with every default, over `data_dir` (embedded SQLite there).
    pub fn dev(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 8470)),
            public_url: None,
            database_url: None,
            durability: Durability::Process,
            dev: true,
            auth_failure_window: Duration::from_secs(10),
            auth_failure_limit: 200,
            max_connections: None,
            max_connections_per_ip: listener::DEFAULT_MAX_CONNECTIONS_PER_IP,
            header_timeout: listener::DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            revoke_on_start: true,
            credential_env: custos_broker::CredentialEnv::process(),
            approvals: custos_broker::ApprovalConfig::default(),
            approval_webhook: None,
            default_bundle: true,
            tool_pinning: None,
            kek_file: None,
        }
    }
}

/// How long a client has to send a request body by default: 4 MiB (the largest MCP body) at
/// 150 KB/s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn load_or_create_key(dir: &Path) -> anyhow::Result<AgentKey> {
    let path = dir.join("signing-key.pem");
    if path.exists() {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        );
        return AgentKey::from_pkcs8_pem(&text)
            .with_context(|| format!("{} is not a valid signing key", path.display()));
    }
    let key = AgentKey::generate().context("cannot generate the signing key")?;
    write_private(&path, &key.to_pkcs8_pem())?;
    tracing::info!(path = %path.display(), "generated the token-signing key");
    Ok(key)
}

/// The key-encryption key: `CUSTOS_KEK` (base64), else `kek_file`, else (with `--dev`)
/// `<data-dir>/kek.key`, generated on first start; else none (static secrets unavailable).
fn load_kek(config: &ServeConfig) -> anyhow::Result<Option<custos_crypto::Kek>> {
    use custos_crypto::Kek;
    if let Ok(text) = std::env::var("CUSTOS_KEK") {
        let text = zeroize::Zeroizing::new(text);
        return Kek::from_base64(&text)
            .map(Some)
            .context("CUSTOS_KEK is not the base64 of 32 bytes");
    }
    let read = |path: &Path| -> anyhow::Result<Kek> {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        );
        Kek::from_base64(&text)
            .with_context(|| format!("{} is not the base64 of 32 bytes", path.display()))
    };
    if let Some(path) = &config.kek_file {
        return read(path).map(Some);
    }
    if !config.dev {
        return Ok(None);
    }
    let path = config.data_dir.join("kek.key");
    if path.exists() {
        return read(&path).map(Some);
    }
    let kek = Kek::generate();
    write_private(&path, &kek.to_base64())?;
    tracing::info!(path = %path.display(), kek = kek.id(), "generated the key-encryption key");
    Ok(Some(kek))
}

/// Everything a running server holds, built but not yet listening. Tests use it directly.
pub struct Built {
    /// Handler state (broker, gateway, metrics).
    pub state: AppState,
    /// Where the admin token was written.
    pub admin_token_path: PathBuf,
}

/// Builds the server: data directory, keys, store (migrated), audit writer, broker, gateway,
/// and the admin token.
///
/// # Errors
/// When the data directory, keys or database cannot be prepared.
pub async fn build(config: &ServeConfig, bound: SocketAddr) -> anyhow::Result<Built> {
    build_with_clock(config, bound, Arc::new(SystemClock)).await
}

/// [`build`] with the clock every component reads (tests drive a manual one).
///
/// # Errors
/// As [`build`].
pub async fn build_with_clock(
    config: &ServeConfig,
    bound: SocketAddr,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Built> {
    if config.dev && !config.listen.ip().is_loopback() {
        bail!(
            "--dev listens on loopback only; `{}` is not a loopback address",
            config.listen
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700));
    }
    let key = load_or_create_key(&config.data_dir)?;
    let issuer = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"))
        .trim_end_matches('/')
        .to_owned();
    let database_url = match &config.database_url {
        Some(u) => u.clone(),
        None => format!("sqlite:{}", config.data_dir.join("custos.db").display()),
    };
    let broker_config = BrokerConfig {
        issuer: issuer.clone(),
        max_token_ttl: Duration::from_secs(900),
        cache_ttl: Duration::from_secs(1),
        auth_failure_window: config.auth_failure_window,
        auth_failure_limit: config.auth_failure_limit,
        credential_env: config.credential_env.clone(),
        revoke_on_start: config.revoke_on_start,
        approvals: config.approvals.clone(),
        tool_pinning: config.tool_pinning.unwrap_or(if config.dev {
            custos_broker::PinMode::FirstUse
        } else {
            custos_broker::PinMode::Approve
        }),
        kek: load_kek(config)?.map(Arc::new),
    };
    let tokens = TokenIssuer::new(ServerKey::new(key), issuer, broker_config.audience());
    // The broker opens the store (migrating it) and the audit writer; its error names the
    // database with the password masked.
    let broker = Broker::open(
        &database_url,
        config.durability,
        tokens,
        clock,
        broker_config,
    )
    .await?;

    let admin_token_path = config.data_dir.join("admin.token");
    let existing = std::fs::read_to_string(&admin_token_path).ok();
    let still_valid = match existing.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => broker
            .authenticate_operator(
                &custos_crypto::PresentedToken::new(t),
                custos_broker::Source::default(),
            )
            .await
            .is_ok_and(|op| op.role() == Role::Admin),
        _ => false,
    };
    if !still_valid {
        // Re-key the admin only when the database is the embedded one in this data directory;
        // a shared database's admin belongs to the replica that created it.
        let embedded = config.database_url.is_none();
        let token = broker
            .bootstrap_operator("admin", Role::Admin, embedded)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the admin operator: {e}"))?;
        match token {
            Some(t) => write_private(&admin_token_path, &format!("{}\n", t.expose()))?,
            None => tracing::warn!(
                path = %admin_token_path.display(),
                "the shared database already has an admin operator; no admin token written here \
                 (copy admin.token from the replica that created it, or use `custos operator create`)"
            ),
        }
    }

    if config.dev && config.default_bundle {
        apply_default_bundle(&broker, &admin_token_path).await?;
    }
    if let Some(hook) = config.approval_webhook.clone() {
        broker.spawn_supervised(crate::webhook::run(broker.clone(), hook));
    }
    let sessions = custos_gateway::SessionMetrics::default();
    let metrics = ServerMetrics::new(broker.metrics(), &sessions);
    let gateway = Arc::new(McpGateway::new(
        broker.clone(),
        Arc::new(UpstreamPool::new()),
        sessions,
    ));
    Ok(Built {
        state: AppState {
            broker,
            gateway,
            metrics,
            body_timeout: config.body_timeout,
        },
        admin_token_path,
    })
}

/// Applies [`DEFAULT_BUNDLE`] as the admin when the registry has never been changed (a first
/// start): a restart never re-applies it over what an operator changed or deleted.
async fn apply_default_bundle(broker: &Broker, admin_token_path: &Path) -> anyhow::Result<()> {
    // The first policy version is 1; every change to upstreams or templates raises it.
    let snap = broker.snapshot().await?;
    let untouched = snap.policy_version <= 1
        && snap.upstreams.is_empty()
        && snap.templates.is_empty()
        && snap.agents.is_empty();
    if !untouched {
        return Ok(());
    }
    let Some(token) = std::fs::read_to_string(admin_token_path).ok() else {
        return Ok(());
    };
    let admin = broker
        .authenticate_operator(
            &custos_crypto::PresentedToken::new(token.trim()),
            custos_broker::Source::default(),
        )
        .await
        .context("the admin token does not authenticate; the default bundle was not applied")?;
    let outcome = broker
        .apply(&admin, DEFAULT_BUNDLE)
        .await
        .context("the default tier bundle (examples/tiers.yaml) does not apply")?;
    tracing::info!(
        changes = outcome.changes.len(),
        "applied the default tier bundle (examples/tiers.yaml); start with --empty to begin without it"
    );
    Ok(())
}

/// Runs the server until SIGINT or SIGTERM, then stops upstreams and drains the audit log.
///
/// # Errors
/// When the server cannot start or the listener fails.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    if config.dev && !config.listen.ip().is_loopback() {
        bail!(
            "--dev listens on loopback only; `{}` is not a loopback address",
            config.listen
        );
    }
    let limits = listener_config(&config)?;
    let tcp = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = tcp.local_addr()?;
    let built = build(&config, addr).await?;
    tracing::info!(
        addr = %addr,
        max_connections = limits.max_connections,
        max_connections_per_ip = limits.max_connections_per_ip,
        header_timeout = ?limits.header_timeout,
        body_timeout = ?config.body_timeout,
        issuer = %built.state.broker.tokens().issuer(),
        store = built.state.broker.store_backend(),
        admin_token = %built.admin_token_path.display(),
        "custos listening"
    );
    eprintln!(
        "custos listening on http://{addr} (admin token in {})",
        built.admin_token_path.display()
    );
    let gateway = built.state.gateway.clone();
    let broker = built.state.broker.clone();
    let metrics = built.state.metrics.clone();
    listener::serve(tcp, router(built.state), metrics, limits, shutdown_signal())
        .await
        .context("server failed")?;
    // Calls in flight finish and are recorded, the audit log drains, then upstreams stop.
    broker.shutdown().await;
    gateway.upstreams().shutdown().await;
    broker.close().await;
    tracing::info!("custos stopped");
    Ok(())
}

/// The listener's limits from the configuration; fails on limits that would refuse everything.
fn listener_config(config: &ServeConfig) -> anyhow::Result<ListenerConfig> {
    let defaults = ListenerConfig::default();
    let limits = ListenerConfig {
        max_connections: config.max_connections.unwrap_or(defaults.max_connections),
        max_connections_per_ip: config.max_connections_per_ip,
        header_timeout: config.header_timeout,
        ..defaults
    };
    if limits.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    if limits.max_connections_per_ip == 0 {
        bail!("--max-connections-per-ip must be at least 1");
    }
    if limits.header_timeout.is_zero() {
        bail!("--header-timeout must be longer than zero");
    }
    if config.body_timeout.is_zero() {
        bail!("--body-timeout must be longer than zero");
    }
    if let Some(fds) = listener::fd_limit()
        && limits.max_connections.saturating_add(listener::FD_RESERVE) > fds
    {
        tracing::warn!(
            max_connections = limits.max_connections,
            fd_limit = fds,
            "--max-connections leaves fewer than {} descriptors under the open-file limit; \
             accept may fail with `too many open files` before the cap is reached",
            listener::FD_RESERVE
        );
    }
    Ok(limits)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
