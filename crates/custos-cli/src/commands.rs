//! The command tree and what each command does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use custos_crypto::AgentKey;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Body, Client};
use crate::output::{print_json, print_resources, print_trace, text};

/// Custos: identity broker and MCP gateway for AI agents.
#[derive(Debug, Parser)]
#[command(name = "custos", version, about)]
pub struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Conn {
    /// Server address.
    #[arg(
        long,
        global = true,
        env = "CUSTOS_ADDR",
        default_value = "http://127.0.0.1:8470"
    )]
    addr: String,
    /// Operator token (default: `./.custos/admin.token` when it exists).
    #[arg(long, global = true, env = "CUSTOS_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Apply resources from a YAML file (multi-document; all or nothing).
    Apply {
        /// The file (`-` for stdin).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show resources: `custos get agents`, `custos get template docs-review -o yaml`.
    Get {
        /// upstream, credentialrole, template, policy or agent (plural accepted).
        kind: String,
        /// One resource by name.
        name: Option<String>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<Format>,
        /// Same as `-o json`.
        #[arg(long)]
        json: bool,
    },
    /// Delete one resource.
    Delete {
        /// upstream, credentialrole, template, policy or agent.
        kind: String,
        /// Its name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Operators and their roles.
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Agent keys and suspension.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Start, inspect and end tasks; get task tokens.
    #[command(subcommand)]
    Task(TaskCmd),
    /// Verify and read the audit trail.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// List and revoke credential leases.
    #[command(subcommand)]
    Lease(LeaseCmd),
    /// Store the values of static credential roles (sealed at rest, never shown again).
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Explain decisions.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Approve an upstream's tools (pin their definitions).
    #[command(subcommand)]
    Upstream(UpstreamCmd),
    /// Held Tier 3 calls: list, show, approve, deny.
    #[command(subcommand)]
    Approvals(ApprovalsCmd),
}

#[derive(Debug, Subcommand)]
enum UpstreamCmd {
    /// Pin the definitions the upstream serves now (name, description, schemas,
    /// annotations): tools that later change are hidden and refused until approved again.
    Approve {
        /// The upstream.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// What would happen to one call of a task, and why: decision, tier, the policies that
    /// decided, taint (nothing is called).
    Explain {
        /// The task id.
        #[arg(long)]
        task: String,
        /// The exposed tool name (`upstream__tool`).
        #[arg(long)]
        tool: String,
        /// The arguments, a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Also print the Cedar policies the call was evaluated against.
        #[arg(long)]
        cedar: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ApprovalsCmd {
    /// List approval requests waiting for an answer (newest first): `id`, `task`, `agent`,
    /// `initiator`, `tool`, `arguments` (secrets redacted), `tier`, `state`, `expires`.
    List {
        /// Every state, not only pending.
        #[arg(long)]
        all: bool,
        /// Only this task's.
        #[arg(long)]
        task: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one approval request.
    Show {
        /// The approval id (`apr_…`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a held call: the identical call then runs once.
    Approve {
        /// The approval id (`apr_…`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deny a held call.
    Deny {
        /// The approval id (`apr_…`).
        id: String,
        /// Why (kept with the approval and in the audit record).
        #[arg(long)]
        reason: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SecretCmd {
    /// Store the value of a `static` credential role, read from standard input (or
    /// `--from-file`); a final newline is dropped. Admin only.
    Put {
        /// The credential role.
        role: String,
        /// Read the value from this file instead of standard input.
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The static secrets stored: `role`, `updated`, `updated_by` (never values).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum LeaseCmd {
    /// List leases, newest first: `id`, `role`, `task`, `principal`, `expires`, `state` (never
    /// passwords).
    List {
        /// Only this task's leases.
        #[arg(long)]
        task: Option<String>,
        /// Only leases marked failed (a mint that failed, or a revocation that gave up).
        #[arg(long)]
        failed: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a lease now (also retries one marked failed).
    Revoke {
        /// The lease id (`lease_…`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Yaml,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// Survives a killed process (SQLite synchronous=NORMAL).
    Process,
    /// Survives a power cut (SQLite synchronous=FULL).
    Power,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PinArg {
    /// An upstream's tools are hidden and refused until `custos upstream approve NAME`.
    Approve,
    /// A tool is pinned the first time it is seen (the `--dev` default).
    FirstUse,
    /// No pinning.
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Development mode: embedded SQLite under the data directory, generated keys, admin token.
    #[arg(long)]
    dev: bool,
    /// With --dev: start with an empty registry instead of applying the default tier bundle
    /// (examples/tiers.yaml) on first start.
    #[arg(long, env = "CUSTOS_EMPTY")]
    empty: bool,
    /// Data directory (keys, database, admin.token).
    #[arg(long, env = "CUSTOS_DATA_DIR", default_value = ".custos")]
    data_dir: PathBuf,
    /// Listen address.
    #[arg(long, env = "CUSTOS_LISTEN", default_value = "127.0.0.1:8470")]
    listen: SocketAddr,
    /// The URL clients use to reach this server (token issuer and audience); default http://<listen>.
    #[arg(long, env = "CUSTOS_PUBLIC_URL")]
    public_url: Option<String>,
    /// Database: `postgres://…` for several replicas, `sqlite:PATH`; default SQLite in the data directory.
    #[arg(long, env = "CUSTOS_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// SQLite durability of audit records and every other write.
    #[arg(long, env = "CUSTOS_DURABILITY", value_enum, default_value = "process")]
    durability: DurabilityArg,
    /// How long failed authentications are summed into one audit record per source and
    /// reason, e.g. `10s`.
    #[arg(long, env = "CUSTOS_AUTH_FAILURE_WINDOW", default_value = "10s", value_parser = parse_duration_arg)]
    auth_failure_window: std::time::Duration,
    /// Failed authentications from one address in one window past which its requests are
    /// refused (429) before any token is checked.
    #[arg(long, env = "CUSTOS_AUTH_FAILURE_LIMIT", default_value_t = 200)]
    auth_failure_limit: u64,
    /// Log format (logs go to stderr; level from RUST_LOG, default info).
    #[arg(long, env = "CUSTOS_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Most TCP connections open at once; more are closed at accept. Default: 4096, or the
    /// open-file limit minus 256 when that is lower.
    #[arg(long, env = "CUSTOS_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most TCP connections open at once from one source address (IPv6: per /64).
    #[arg(long, env = "CUSTOS_MAX_CONNECTIONS_PER_IP", default_value_t = custos_server::listener::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: usize,
    /// Time a client has to send a request's headers (also the longest an HTTP/1 keep-alive
    /// connection idles), e.g. `10s`.
    #[arg(long, env = "CUSTOS_HEADER_TIMEOUT", default_value = "10s", value_parser = custos_core::parse_duration)]
    header_timeout: std::time::Duration,
    /// Time a client has to send a request's body once its headers are in (late: 408 and the
    /// connection closed), e.g. `30s`.
    #[arg(long, env = "CUSTOS_BODY_TIMEOUT", default_value = "30s", value_parser = custos_core::parse_duration)]
    body_timeout: std::time::Duration,
    /// Do not run the lease reconciler (which, at start and every few minutes, removes this
    /// installation's database users that no live lease covers): the safe mode after
    /// restoring the database from a backup. Expired leases are still revoked.
    #[arg(long)]
    no_revoke_on_start: bool,
    /// A file holding the key-encryption key static secrets are sealed under (the base64 of
    /// 32 random bytes; `CUSTOS_KEK` holds the key itself and wins). With --dev and neither,
    /// `<data-dir>/kek.key` is generated on first start; without any, static roles are
    /// unavailable.
    #[arg(long, env = "CUSTOS_KEK_FILE")]
    kek_file: Option<PathBuf>,
    /// How long a held (Tier 3) call waits for an approval before the agent is told
    /// `approval_pending` (the identical call may be retried), e.g. `25s`.
    #[arg(long, env = "CUSTOS_APPROVAL_HOLD", default_value = "25s", value_parser = custos_core::parse_duration)]
    approval_hold: std::time::Duration,
    /// How long an approval request lives, unanswered or approved and unused, e.g. `10m`.
    #[arg(long, env = "CUSTOS_APPROVAL_TTL", default_value = "10m", value_parser = parse_duration_arg)]
    approval_ttl: std::time::Duration,
    /// Let a task's initiator and the operator who started it answer its approvals
    /// (separation of duties is on by default).
    #[arg(long)]
    allow_self_approval: bool,
    /// POST every approval request and answer as JSON to this URL (a chat bot, a pager).
    #[arg(long, env = "CUSTOS_APPROVAL_WEBHOOK", hide_env_values = true)]
    approval_webhook: Option<String>,
    /// Sign webhook POSTs with the key in this file (`X-Custos-Signature: sha256=HMAC(key,
    /// "<X-Custos-Timestamp>.<body>")`).
    #[arg(
        long,
        env = "CUSTOS_APPROVAL_WEBHOOK_SECRET_FILE",
        requires = "approval_webhook"
    )]
    approval_webhook_secret_file: Option<PathBuf>,
    /// How upstream tool definitions are pinned: a tool whose definition differs from the
    /// pinned one is hidden and refused. Default: first-use with --dev, approve otherwise.
    #[arg(long, env = "CUSTOS_TOOL_PINNING", value_enum)]
    tool_pinning: Option<PinArg>,
}

#[derive(Debug, Subcommand)]
enum OperatorCmd {
    /// Create an operator and print its token once.
    Create {
        /// Its name.
        name: String,
        /// admin, initiator, approver or auditor.
        #[arg(long)]
        role: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List operators.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AgentCmd {
    /// Generate an Ed25519 key pair: the private key goes to FILE (mode 0600), the public key
    /// is printed for the Agent resource. Runs offline.
    Keygen {
        /// Where to write the private key (PKCS#8 PEM).
        #[arg(long)]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Suspend an agent: its tokens are refused at once.
    Suspend {
        /// The agent.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resume a suspended agent.
    Resume {
        /// The agent.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TaskCmd {
    /// Start a task for an initiator.
    Start {
        /// The agent.
        #[arg(long)]
        agent: String,
        /// The template.
        #[arg(long)]
        template: String,
        /// The human or event on whose behalf.
        #[arg(long)]
        on_behalf_of: String,
        /// Why.
        #[arg(long)]
        purpose: Option<String>,
        /// Lifetime (at most the template's), e.g. 30m.
        #[arg(long)]
        ttl: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Exchange the agent's key for a task token (RFC 8693 at /oauth/token). Needs no operator token.
    Token {
        /// The task id.
        #[arg(long)]
        task: String,
        /// The agent's private key file.
        #[arg(long)]
        agent_key: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// End a task at once.
    End {
        /// The task id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one task.
    Get {
        /// The task id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List recent tasks.
    List {
        /// Only this agent's.
        #[arg(long)]
        agent: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Re-read every stored record and check the hash chain. Exit 0 only if it holds.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one task's whole chain: initiator, task, agent, each call, decision, outcome.
    Trace {
        /// The task id.
        task: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    match custos_core::parse_duration(s)? {
        d if d.is_zero() => Err("must be longer than zero".to_owned()),
        d => Ok(d),
    }
}

fn operator_client(conn: &Conn) -> anyhow::Result<Client> {
    let token = match &conn.token {
        Some(t) => Some(t.trim().to_owned()),
        None => std::fs::read_to_string(".custos/admin.token")
            .ok()
            .map(|t| t.trim().to_owned()),
    };
    Client::new(&conn.addr, token)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn done(json: bool, value: &Value, human: impl FnOnce()) -> anyhow::Result<ExitCode> {
    if json {
        print_json(value)?;
    } else {
        human();
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one parsed command.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let conn = cli.conn;
    match cli.command {
        Command::Serve(a) => {
            init_logging(a.log_format);
            let approval_webhook = match &a.approval_webhook {
                None => None,
                Some(url) => {
                    let secret = match &a.approval_webhook_secret_file {
                        None => None,
                        Some(f) => {
                            let raw = zeroize::Zeroizing::new(
                                std::fs::read(f)
                                    .with_context(|| format!("cannot read {}", f.display()))?,
                            );
                            Some(zeroize::Zeroizing::new(raw.trim_ascii().to_vec()))
                        }
                    };
                    Some(
                        custos_server::webhook::WebhookConfig::new(url, secret)
                            .map_err(|e| anyhow::anyhow!("--approval-webhook: {e}"))?,
                    )
                }
            };
            let config = custos_server::ServeConfig {
                data_dir: a.data_dir,
                listen: a.listen,
                public_url: a.public_url,
                database_url: a.database_url,
                durability: match a.durability {
                    DurabilityArg::Process => custos_broker::Durability::Process,
                    DurabilityArg::Power => custos_broker::Durability::Power,
                },
                dev: a.dev,
                auth_failure_window: a.auth_failure_window,
                auth_failure_limit: a.auth_failure_limit,
                max_connections: a.max_connections,
                max_connections_per_ip: a.max_connections_per_ip,
                header_timeout: a.header_timeout,
                body_timeout: a.body_timeout,
                revoke_on_start: !a.no_revoke_on_start,
                credential_env: custos_broker::CredentialEnv::process(),
                approvals: custos_broker::ApprovalConfig {
                    hold: a.approval_hold,
                    ttl: a.approval_ttl,
                    separation_of_duties: !a.allow_self_approval,
                    ..custos_broker::ApprovalConfig::default()
                },
                approval_webhook,
                default_bundle: !a.empty,
                tool_pinning: a.tool_pinning.map(|p| match p {
                    PinArg::Approve => custos_broker::PinMode::Approve,
                    PinArg::FirstUse => custos_broker::PinMode::FirstUse,
                    PinArg::Off => custos_broker::PinMode::Off,
                }),
                kek_file: a.kek_file,
            };
            custos_server::run(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply { file, json } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .context("cannot read stdin")?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let base = file
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            let text = crate::output::inline_key_files(&text, &base)?;
            let out = operator_client(&conn)?
                .send(Method::POST, "/v1/apply", Body::Yaml(text))
                .await?;
            done(json, &out, || {
                for c in out["changes"].as_array().into_iter().flatten() {
                    println!(
                        "{} {} {} (version {})",
                        crate::output::text(&c["kind"]),
                        crate::output::text(&c["name"]),
                        crate::output::text(&c["op"]),
                        c["version"]
                    );
                }
            })
        }
        Command::Get {
            kind,
            name,
            output,
            json,
        } => {
            let client = operator_client(&conn)?;
            let path = match &name {
                Some(n) => format!("/v1/resources/{kind}/{n}"),
                None => format!("/v1/resources/{kind}"),
            };
            let out = client.get(&path).await?;
            let format = if json { Some(Format::Json) } else { output };
            match format {
                Some(Format::Json) => print_json(&out)?,
                Some(Format::Yaml) => print_resources(&out, true)?,
                None => print_resources(&out, false)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete { kind, name, json } => {
            let out = operator_client(&conn)?
                .send(
                    Method::DELETE,
                    &format!("/v1/resources/{kind}/{name}"),
                    Body::None,
                )
                .await?;
            done(json, &out, || {
                println!(
                    "{} {name} deleted (was version {})",
                    out["kind"].as_str().unwrap_or(&kind),
                    out["version"]
                )
            })
        }
        Command::Operator(OperatorCmd::Create { name, role, json }) => {
            let out = operator_client(&conn)?
                .post("/v1/operators", json!({ "name": name, "role": role }))
                .await?;
            done(json, &out, || {
                eprintln!("operator `{name}` created with role `{role}`; its token is shown once:");
                println!("{}", text(&out["token"]));
            })
        }
        Command::Operator(OperatorCmd::List { json }) => {
            let out = operator_client(&conn)?.get("/v1/operators").await?;
            done(json, &out, || {
                for o in out.as_array().into_iter().flatten() {
                    println!("{:<24} {}", text(&o["name"]), text(&o["role"]));
                }
            })
        }
        Command::Agent(AgentCmd::Keygen { out, json }) => keygen(&out, json),
        Command::Agent(AgentCmd::Suspend { name, json }) => {
            let out = operator_client(&conn)?
                .post(&format!("/v1/agents/{name}/suspend"), json!({}))
                .await?;
            done(json, &out, || println!("agent {name} suspended"))
        }
        Command::Agent(AgentCmd::Resume { name, json }) => {
            let out = operator_client(&conn)?
                .post(&format!("/v1/agents/{name}/resume"), json!({}))
                .await?;
            done(json, &out, || println!("agent {name} resumed"))
        }
        Command::Task(TaskCmd::Start {
            agent,
            template,
            on_behalf_of,
            purpose,
            ttl,
            json,
        }) => {
            let body = json!({ "agent": agent, "template": template, "on_behalf_of": on_behalf_of, "purpose": purpose, "ttl": ttl });
            let out = operator_client(&conn)?.post("/v1/tasks", body).await?;
            done(json, &out, || {
                println!("{}", text(&out["task_id"]));
                eprintln!(
                    "task started for {on_behalf_of}: agent {agent}, template {template}, expires {}",
                    text(&out["expires"])
                );
            })
        }
        Command::Task(TaskCmd::Token {
            task,
            agent_key,
            json,
        }) => task_token(&conn, &task, &agent_key, json).await,
        Command::Task(TaskCmd::End { id, json }) => {
            let out = operator_client(&conn)?
                .post(&format!("/v1/tasks/{id}/end"), json!({}))
                .await?;
            done(json, &out, || println!("task {id} ended"))
        }
        Command::Task(TaskCmd::Get { id, json }) => {
            let out = operator_client(&conn)?
                .get(&format!("/v1/tasks/{id}"))
                .await?;
            done(json, &out, || {
                println!(
                    "{} {} agent={} template={} on_behalf_of={} expires={}",
                    text(&out["id"]),
                    text(&out["state"]),
                    text(&out["agent"]),
                    text(&out["template"]),
                    text(&out["on_behalf_of"]),
                    text(&out["expires"])
                );
            })
        }
        Command::Task(TaskCmd::List { agent, json }) => {
            let path = match &agent {
                Some(a) => format!("/v1/tasks?agent={a}"),
                None => "/v1/tasks".to_owned(),
            };
            let out = operator_client(&conn)?.get(&path).await?;
            done(json, &out, || {
                for t in out.as_array().into_iter().flatten() {
                    println!(
                        "{} {:<7} {:<28} {:<20} {}",
                        text(&t["id"]),
                        text(&t["state"]),
                        text(&t["agent"]),
                        text(&t["template"]),
                        text(&t["on_behalf_of"])
                    );
                }
            })
        }
        Command::Lease(LeaseCmd::List { task, failed, json }) => {
            let mut query = Vec::new();
            if let Some(t) = &task {
                if !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    bail!("`{t}` is not a task id");
                }
                query.push(format!("task={t}"));
            }
            if failed {
                query.push("failed=true".to_owned());
            }
            let path = if query.is_empty() {
                "/v1/leases".to_owned()
            } else {
                format!("/v1/leases?{}", query.join("&"))
            };
            let out = operator_client(&conn)?.get(&path).await?;
            done(json, &out, || {
                for l in out.as_array().into_iter().flatten() {
                    println!(
                        "{} {:<7} {:<20} {} {} {}",
                        text(&l["id"]),
                        text(&l["state"]),
                        text(&l["role"]),
                        text(&l["principal"]),
                        text(&l["task"]),
                        text(&l["expires"])
                    );
                }
            })
        }
        Command::Lease(LeaseCmd::Revoke { id, json }) => {
            if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                bail!("`{id}` is not a lease id");
            }
            let out = operator_client(&conn)?
                .post(&format!("/v1/leases/{id}/revoke"), json!({}))
                .await?;
            done(json, &out, || {
                println!("lease {id} revoked ({})", text(&out["principal"]));
            })
        }
        Command::Secret(SecretCmd::Put {
            role,
            from_file,
            json,
        }) => {
            custos_core::names::check_resource_name(&role)
                .map_err(|e| anyhow::anyhow!("`{role}`: {e}"))?;
            let mut value = zeroize::Zeroizing::new(String::new());
            match &from_file {
                Some(path) => {
                    *value = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                }
                None => {
                    use std::io::Read as _;
                    std::io::stdin()
                        .take(custos_broker::MAX_STATIC_SECRET as u64 + 2)
                        .read_to_string(&mut value)
                        .context("cannot read the value from standard input")?;
                }
            }
            let trimmed = value
                .strip_suffix('\n')
                .map(|v| v.strip_suffix('\r').unwrap_or(v))
                .unwrap_or(&value);
            let out = operator_client(&conn)?
                .put(&format!("/v1/secrets/{role}"), json!({ "value": trimmed }))
                .await?;
            done(json, &out, || {
                println!("secret of {role} stored ({})", text(&out["updated"]));
            })
        }
        Command::Secret(SecretCmd::List { json }) => {
            let out = operator_client(&conn)?.get("/v1/secrets").await?;
            done(json, &out, || {
                for s in out.as_array().into_iter().flatten() {
                    println!(
                        "{:<24} {} {}",
                        text(&s["role"]),
                        text(&s["updated"]),
                        text(&s["updated_by"])
                    );
                }
            })
        }
        Command::Approvals(cmd) => approvals(&conn, cmd).await,
        Command::Upstream(UpstreamCmd::Approve { name, json }) => {
            custos_core::names::check_resource_name(&name)
                .map_err(|e| anyhow::anyhow!("`{name}`: {e}"))?;
            let out = operator_client(&conn)?
                .post(&format!("/v1/upstreams/{name}/approve"), json!({}))
                .await?;
            done(json, &out, || {
                println!(
                    "upstream {name}: {} tools pinned{}",
                    out["tools"].as_array().map_or(0, Vec::len),
                    match out["changed"].as_array().map_or(0, Vec::len) {
                        0 => String::new(),
                        n => format!(", {n} changed since the last approval"),
                    }
                );
            })
        }
        Command::Policy(PolicyCmd::Explain {
            task,
            tool,
            args,
            cedar,
            json,
        }) => {
            let arguments: Value = serde_json::from_str(&args)
                .context("--args must be JSON (an object of the call's arguments)")?;
            if !arguments.is_object() {
                bail!("--args must be a JSON object");
            }
            let out = operator_client(&conn)?
                .post(
                    "/v1/policy/explain",
                    json!({ "task": task, "tool": tool, "arguments": arguments }),
                )
                .await?;
            done(json, &out, || print_explanation(&out, cedar))
        }
        Command::Audit(AuditCmd::Verify { json }) => {
            let out = operator_client(&conn)?.get("/v1/audit/verify").await?;
            let ok = out["ok"].as_bool() == Some(true);
            if json {
                print_json(&out)?;
            } else if ok {
                println!(
                    "audit log intact: {} records, last #{} {}",
                    out["records"],
                    out["last_seq"],
                    text(&out["last_hash"])
                );
            } else {
                eprintln!("audit log BROKEN:");
                for p in out["problems"].as_array().into_iter().flatten() {
                    eprintln!("  - {}", text(p));
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Audit(AuditCmd::Trace { task, json }) => {
            let out = operator_client(&conn)?
                .get(&format!("/v1/audit/trace/{task}"))
                .await?;
            if json {
                print_json(&out)?
            } else {
                print_trace(&out)
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_explanation(e: &Value, cedar: bool) {
    let list = |v: &Value| {
        let items: Vec<String> = v.as_array().into_iter().flatten().map(text).collect();
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(", ")
        }
    };
    let tier = e["tier"]
        .as_u64()
        .map_or_else(|| "-".to_owned(), |t| t.to_string());
    println!(
        "decision:       {} ({})",
        text(&e["decision"]),
        text(&e["reason"])
    );
    println!("tier:           {tier}");
    if e["message"].is_string() {
        println!("message:        {}", text(&e["message"]));
    }
    println!("allowed by:     {}", list(&e["allowed_by"]));
    if e["forbidden_by"].as_array().is_some_and(|a| !a.is_empty()) {
        println!("forbidden by:   {}", list(&e["forbidden_by"]));
    }
    println!("tier set by:    {}", list(&e["tiered_by"]));
    if e["errors"].as_array().is_some_and(|a| !a.is_empty()) {
        println!(
            "not evaluable:  {} (counted against the call)",
            list(&e["errors"])
        );
    }
    let taint = if e["tainted"] == true {
        format!("yes (by {})", text(&e["tainted_by"]))
    } else {
        "no".to_owned()
    };
    println!("tainted:        {taint}");
    println!("policy version: {}", e["policy_version"]);
    println!(
        "task:           {} (template {})",
        text(&e["task"]),
        text(&e["template"])
    );
    if e["approval"].is_object() {
        println!(
            "approval:       {} ({})",
            text(&e["approval"]["id"]),
            text(&e["approval"]["state"])
        );
    }
    if let Some(policies) = e["cedar"].as_str().filter(|_| cedar) {
        println!();
        for line in policies.lines() {
            println!("{}", custos_core::text::escape_unsafe(line));
        }
    }
}

/// An approval id as a path segment: its shape checked before it is put in a URL.
fn approval_path(id: &str, action: &str) -> anyhow::Result<String> {
    if custos_core::ApprovalId::parse(id).is_none() {
        bail!(
            "`{}` is not an approval id (apr_…)",
            custos_core::text::for_display(id, 80)
        );
    }
    Ok(format!("/v1/approvals/{id}{action}"))
}

fn print_approval(a: &Value) {
    println!(
        "{} {:<8} tier {} {} task={} agent={} initiator={} expires={}",
        text(&a["id"]),
        text(&a["state"]),
        a["tier"],
        text(&a["tool"]),
        text(&a["task"]),
        text(&a["agent"]),
        text(&a["initiator"]),
        text(&a["expires"])
    );
}

async fn approvals(conn: &Conn, cmd: ApprovalsCmd) -> anyhow::Result<ExitCode> {
    let client = operator_client(conn)?;
    match cmd {
        ApprovalsCmd::List { all, task, json } => {
            let mut query = Vec::new();
            if all {
                query.push("all=true".to_owned());
            }
            if let Some(t) = &task {
                if custos_core::TaskId::parse(t).is_none() {
                    bail!(
                        "`{}` is not a task id",
                        custos_core::text::for_display(t, 80)
                    );
                }
                query.push(format!("task={t}"));
            }
            let path = if query.is_empty() {
                "/v1/approvals".to_owned()
            } else {
                format!("/v1/approvals?{}", query.join("&"))
            };
            let out = client.get(&path).await?;
            done(json, &out, || {
                for a in out.as_array().into_iter().flatten() {
                    print_approval(a);
                }
            })
        }
        ApprovalsCmd::Show { id, json } => {
            let out = client.get(&approval_path(&id, "")?).await?;
            done(json, &out, || {
                print_approval(&out);
                println!(
                    "  policy version {}, digest {}",
                    out["policy_version"],
                    text(&out["digest"])
                );
                println!(
                    "  arguments: {}",
                    custos_core::text::escape_unsafe(&out["arguments"].to_string())
                );
            })
        }
        ApprovalsCmd::Approve { id, json } => {
            let out = client
                .post(&approval_path(&id, "/approve")?, json!({}))
                .await?;
            done(json, &out, || {
                println!("approval {id} approved: the identical call may run once")
            })
        }
        ApprovalsCmd::Deny { id, reason, json } => {
            let out = client
                .post(&approval_path(&id, "/deny")?, json!({ "reason": reason }))
                .await?;
            done(json, &out, || println!("approval {id} denied"))
        }
    }
}

fn keygen(out: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let key = AgentKey::generate().context("cannot generate a key")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist yet)", out.display()))?;
    f.write_all(key.to_pkcs8_pem().as_bytes())?;
    f.sync_all()?;
    let public = key.public_key_pem();
    let value = json!({
        "private_key_file": out.display().to_string(),
        "public_key": public,
        "thumbprint": custos_crypto::jwk_thumbprint(&key.public_key()),
    });
    done(json, &value, || print!("{public}"))
}

async fn task_token(
    conn: &Conn,
    task: &str,
    key_file: &std::path::Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(key_file)
            .with_context(|| format!("cannot read {}", key_file.display()))?,
    );
    let key = AgentKey::from_pkcs8_pem(&pem)
        .with_context(|| format!("{} is not an agent key", key_file.display()))?;
    let client = Client::new(&conn.addr, None)?;
    let meta = client
        .get("/.well-known/oauth-authorization-server")
        .await?;
    let Some(issuer) = meta["issuer"].as_str() else {
        bail!("the server published no issuer")
    };
    let endpoint = meta["token_endpoint"].as_str().unwrap_or("/oauth/token");
    let path = endpoint
        .strip_prefix(client.base())
        .unwrap_or("/oauth/token");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    let thumbprint = custos_crypto::jwk_thumbprint(&key.public_key());
    let assertion = custos_crypto::jwt::sign_assertion(&key, &thumbprint, issuer, now, 60)
        .map_err(|e| anyhow::anyhow!("cannot sign the assertion: {e}"))?;
    let form = vec![
        ("grant_type", custos_broker::TOKEN_EXCHANGE_GRANT.to_owned()),
        ("subject_token", task.to_owned()),
        (
            "subject_token_type",
            custos_broker::TASK_ID_TOKEN_TYPE.to_owned(),
        ),
        ("actor_token", assertion),
        ("actor_token_type", custos_broker::JWT_TOKEN_TYPE.to_owned()),
    ];
    let out = client.send(Method::POST, path, Body::Form(form)).await?;
    let value = json!({ "access_token": out["access_token"], "expires_in": out["expires_in"], "token_type": out["token_type"] });
    done(json, &value, || println!("{}", text(&out["access_token"])))
}
