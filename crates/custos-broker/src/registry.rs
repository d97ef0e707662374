//! The registry: applying, reading and deleting resources, and the in-memory snapshot the hot
//! path reads (reloaded after every change made here, and when older than the cache TTL).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};

use custos_audit::{AuditEvent, Detail, EventKind};
use custos_core::operator::Permission;
use custos_core::resource::parse_documents;
use custos_core::{
    AgentId, AgentSpec, AgentStatus, Change, ChangeOp, CredentialRoleSpec, ExposedTool, Kind,
    Resource, StoredResource, TemplateSpec, UpstreamSpec,
};
use custos_credentials::RoleSpec;
use custos_crypto::{new_id, parse_public_key_pem};
use custos_store::{AppliedChange, ResourceRow, ResourceWrite, Store};

use crate::operators::Operator;
use crate::{Broker, BrokerError};

/// One versioned resource in the snapshot.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    /// The stored version.
    pub version: i64,
    /// The spec.
    pub spec: T,
}

impl AsRef<UpstreamSpec> for Versioned<UpstreamSpec> {
    fn as_ref(&self) -> &UpstreamSpec {
        &self.spec
    }
}

/// A registered agent in the snapshot.
#[derive(Debug, Clone)]
pub struct AgentEntry {
    /// Its immutable id (`agent_…`): tasks bind to it, so an agent deleted and re-created under
    /// the same name does not inherit the old one's tasks and tokens.
    pub id: AgentId,
    /// The stored version.
    pub version: i64,
    /// The spec.
    pub spec: AgentSpec,
    /// Its parsed Ed25519 public key.
    pub key: [u8; 32],
}

/// A credential role in the snapshot, with its engine spec read and validated.
#[derive(Debug, Clone)]
pub struct CredentialRoleEntry {
    /// The stored version (engines are rebuilt when it changes).
    pub version: i64,
    /// The resource.
    pub spec: CredentialRoleSpec,
    /// Its `role:` fields as the engine reads them.
    pub role: RoleSpec,
}

/// Reads a credential role's `role:` fields into the engine's spec and validates them.
///
/// # Errors
/// A message naming the field (`field `role.groups[0]`: …`).
pub(crate) fn engine_spec(spec: &CredentialRoleSpec) -> Result<RoleSpec, String> {
    let role: RoleSpec =
        serde_json::from_value(spec.engine_document()).map_err(|e| format!("field `role`: {e}"))?;
    role.validate().map_err(|e| match e {
        custos_credentials::CredentialError::InvalidRole { field, reason, .. } => {
            format!("field `role.{field}`: {reason}")
        }
        other => format!("field `role`: {other}"),
    })?;
    Ok(role)
}

/// Everything the hot path needs from the registry, as of one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The policy version: grows with every change to upstreams or templates; every decision
    /// records the version it was made under.
    pub policy_version: i64,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Versioned<UpstreamSpec>>,
    /// Credential roles by name.
    pub credential_roles: BTreeMap<String, CredentialRoleEntry>,
    /// Templates by name.
    pub templates: BTreeMap<String, Versioned<TemplateSpec>>,
    /// Agents by name.
    pub agents: BTreeMap<String, AgentEntry>,
    /// Suspended agents.
    pub suspended: HashSet<String>,
    /// When this snapshot was read (Unix ms).
    pub loaded_at: i64,
    /// The Cedar policies of this version, compiled per template and tool on first use.
    pub compiled: Arc<custos_policy::Compiled>,
    /// The raw Cedar policies (`kind: Policy`) of this version.
    pub policies: Vec<custos_core::PolicySpec>,
    /// Per template, the one upstream it reaches that is exposed without a prefix (computed
    /// once per snapshot: every call's name is resolved against it).
    pub bare: BTreeMap<String, String>,
}

impl Snapshot {
    /// The one upstream `template` reaches whose tools agents see by their own names
    /// (`prefix: false`), if any.
    pub fn bare_upstream(&self, template: &str) -> Option<&str> {
        self.bare.get(template).map(String::as_str)
    }

    fn find_bare_upstreams(&mut self) {
        self.bare = self
            .templates
            .iter()
            .filter_map(|(t, spec)| {
                self.upstreams
                    .iter()
                    .find(|(name, up)| !up.spec.prefix && spec.spec.reaches(name))
                    .map(|(name, _)| (t.clone(), name.clone()))
            })
            .collect();
    }

    /// The name policy, tiers and the audit log give the tool an agent of `template` called
    /// `name`: `upstream__tool`. A name that is not a prefixed upstream's exposed tool is the
    /// template's bare upstream's own tool name, when it has one.
    pub fn canonical_tool<'a>(&self, template: &str, name: &'a str) -> Cow<'a, str> {
        let Some(bare) = self.bare_upstream(template) else {
            return Cow::Borrowed(name);
        };
        let prefixed = ExposedTool::parse(name)
            .ok()
            .and_then(|t| self.upstreams.get(&t.upstream))
            .is_some_and(|up| up.spec.prefix);
        if prefixed {
            Cow::Borrowed(name)
        } else {
            Cow::Owned(format!(
                "{bare}{}{name}",
                custos_core::names::TOOL_SEPARATOR
            ))
        }
    }
}

/// A template that would reach two upstreams exposed without a prefix, once `resources` are
/// applied over `snap`: their tools could share names.
fn two_bare_upstreams(snap: &Snapshot, resources: &[Resource]) -> Option<(String, String, String)> {
    let mut upstreams: BTreeMap<&str, &UpstreamSpec> = snap
        .upstreams
        .iter()
        .map(|(n, u)| (n.as_str(), &u.spec))
        .collect();
    let mut templates: BTreeMap<&str, &TemplateSpec> = snap
        .templates
        .iter()
        .map(|(n, t)| (n.as_str(), &t.spec))
        .collect();
    for r in resources {
        match r {
            Resource::Upstream(u) => {
                upstreams.insert(&u.name, u);
            }
            Resource::Template(t) => {
                templates.insert(&t.name, t);
            }
            _ => {}
        }
    }
    templates.values().find_map(|t| {
        let mut bare = upstreams
            .iter()
            .filter(|(n, u)| !u.prefix && t.reaches(n))
            .map(|(n, _)| *n);
        match (bare.next(), bare.next()) {
            (Some(a), Some(b)) => Some((t.name.clone(), a.to_owned(), b.to_owned())),
            _ => None,
        }
    })
}

pub(crate) struct RegistryCache {
    current: RwLock<Arc<Snapshot>>,
    // One refresh at a time: callers that find a refresh under way use the snapshot they have.
    refreshing: tokio::sync::Mutex<()>,
}

/// Reads the registry. `previous` is the snapshot it replaces: when the policy version has not
/// moved, its compiled policies (and the slices and evaluations they keep) carry over, since
/// only upstreams, templates and policies decide calls and each change to them moves the
/// version. (The version is read after everything else, so an unchanged version means nothing
/// read here is newer than `previous`.)
async fn load_snapshot(
    store: &Store,
    now: i64,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, BrokerError> {
    let mut snap = Snapshot {
        loaded_at: now,
        ..Snapshot::default()
    };
    for row in store.list_resources(Kind::Upstream.as_str()).await? {
        if let Ok(Resource::Upstream(spec)) = Resource::from_spec_json(Kind::Upstream, row.spec) {
            snap.upstreams.insert(
                row.name,
                Versioned {
                    version: row.version,
                    spec,
                },
            );
        }
    }
    for row in store.list_resources(Kind::CredentialRole.as_str()).await? {
        if let Ok(Resource::CredentialRole(spec)) =
            Resource::from_spec_json(Kind::CredentialRole, row.spec)
        {
            // INVARIANT: checked at apply; a role that no longer reads is left out (no mint).
            match engine_spec(&spec) {
                Ok(role) => {
                    snap.credential_roles.insert(
                        row.name,
                        CredentialRoleEntry {
                            version: row.version,
                            spec,
                            role,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(role = %row.name, error = %e, "stored credential role no longer reads")
                }
            }
        }
    }
    for row in store.list_resources(Kind::Template.as_str()).await? {
        if let Ok(Resource::Template(spec)) = Resource::from_spec_json(Kind::Template, row.spec) {
            snap.templates.insert(
                row.name,
                Versioned {
                    version: row.version,
                    spec,
                },
            );
        }
    }
    for row in store.list_resources(Kind::Agent.as_str()).await? {
        if let Ok(Resource::Agent(spec)) = Resource::from_spec_json(Kind::Agent, row.spec) {
            // INVARIANT: keys and ids were checked at apply; one that no longer parses leaves
            // the agent out (deny).
            if let (Ok(key), Some(id)) = (
                parse_public_key_pem(&spec.public_key),
                AgentId::parse(&row.uid),
            ) {
                snap.agents.insert(
                    row.name,
                    AgentEntry {
                        id,
                        version: row.version,
                        spec,
                        key,
                    },
                );
            }
        }
    }
    let mut policies = Vec::new();
    for row in store.list_resources(Kind::Policy.as_str()).await? {
        match Resource::from_spec_json(Kind::Policy, row.spec) {
            Ok(Resource::Policy(spec)) => policies.push(spec),
            // A stored policy that no longer reads must not silently stop forbidding.
            _ => policies.push(custos_core::PolicySpec {
                name: row.name,
                description: None,
                cedar: "this stored policy no longer reads".into(),
            }),
        }
    }
    snap.policy_version = store.policy_version().await?;
    snap.compiled = match previous {
        Some(p) if p.policy_version == snap.policy_version => p.compiled.clone(),
        _ => Arc::new(custos_policy::Compiled::new(
            policies.iter().map(|p| (p.name.as_str(), p.cedar.as_str())),
        )),
    };
    snap.policies = policies;
    // One query for every suspension, not one per agent (the snapshot is re-read each second).
    snap.suspended = store.suspended_agents().await?.into_iter().collect();
    snap.find_bare_upstreams();
    Ok(snap)
}

impl RegistryCache {
    pub(crate) async fn load(store: &Store, now: i64) -> Result<Self, BrokerError> {
        Ok(Self {
            current: RwLock::new(Arc::new(load_snapshot(store, now, None).await?)),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    fn get(&self) -> Arc<Snapshot> {
        self.current.read().map(|g| g.clone()).unwrap_or_default()
    }

    fn set(&self, snap: Snapshot) {
        if let Ok(mut g) = self.current.write() {
            *g = Arc::new(snap);
        }
    }
}

/// The result of `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// One entry per document, in the order applied.
    pub changes: Vec<Change>,
}

/// A stored kind name as the domain's [`Kind`]; anything else is a corrupt row.
fn stored_kind(kind: &str) -> Result<Kind, BrokerError> {
    Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind)
        .ok_or_else(|| {
            tracing::error!(kind, "stored resource of an unknown kind");
            BrokerError::Unavailable("store")
        })
}

fn change_from_row(c: AppliedChange) -> Result<Change, BrokerError> {
    Ok(Change {
        kind: stored_kind(&c.kind)?,
        name: c.name,
        id: c.uid,
        version: c.version,
        op: match c.op {
            custos_store::ChangeOp::Created => ChangeOp::Created,
            custos_store::ChangeOp::Updated => ChangeOp::Updated,
            custos_store::ChangeOp::Unchanged => ChangeOp::Unchanged,
            custos_store::ChangeOp::Deleted => ChangeOp::Deleted,
        },
    })
}

fn resource_from_row(r: ResourceRow) -> Result<StoredResource, BrokerError> {
    Ok(StoredResource {
        kind: stored_kind(&r.kind)?,
        name: r.name,
        id: r.uid,
        version: r.version,
        spec: r.spec,
        updated_at: r.updated_at,
        updated_by: r.updated_by,
    })
}

impl Broker {
    /// The current registry snapshot, re-read when older than the cache TTL.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the store cannot be read for a stale snapshot.
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, BrokerError> {
        let snap = self.inner.registry.get();
        let now = self.inner.clock.now_ms();
        let ttl = i64::try_from(self.inner.config.cache_ttl.as_millis()).unwrap_or(i64::MAX);
        if now - snap.loaded_at <= ttl {
            return Ok(snap);
        }
        let Ok(_guard) = self.inner.registry.refreshing.try_lock() else {
            return Ok(snap);
        };
        self.reload().await
    }

    /// The snapshot, re-read at once when it lacks what `has` looks for (something another
    /// replica just created) and is older than `min_age_ms` (which bounds how often a request
    /// naming something that does not exist can force a re-read).
    pub(crate) async fn snapshot_having(
        &self,
        has: impl Fn(&Snapshot) -> bool,
        min_age_ms: i64,
    ) -> Result<Arc<Snapshot>, BrokerError> {
        let snap = self.snapshot().await?;
        if has(&snap) || self.inner.clock.now_ms() - snap.loaded_at < min_age_ms {
            return Ok(snap);
        }
        self.reload().await
    }

    async fn reload(&self) -> Result<Arc<Snapshot>, BrokerError> {
        let previous = self.inner.registry.get();
        let snap = load_snapshot(
            &self.inner.store,
            self.inner.clock.now_ms(),
            Some(&previous),
        )
        .await?;
        self.inner.registry.set(snap);
        Ok(self.inner.registry.get())
    }

    /// Applies a multi-document YAML text: every document is checked first, then all are
    /// written in one transaction. Each change is versioned and audited.
    ///
    /// # Errors
    /// [`BrokerError::Invalid`] naming the document and field when any document is bad (nothing
    /// is applied); [`BrokerError::Forbidden`] without the admin role.
    pub async fn apply(&self, op: &Operator, yaml: &str) -> Result<ApplyOutcome, BrokerError> {
        op.require(Permission::Administer)?;
        // Parsing is CPU work proportional to the (bounded) input: keep it off the async
        // workers so one large apply cannot stall other requests.
        let text = yaml.to_owned();
        let resources = tokio::task::spawn_blocking(move || parse_documents(&text))
            .await
            .map_err(|_| BrokerError::Unavailable("resource parser"))?
            .map_err(|e| BrokerError::Invalid(e.to_string()))?;
        if resources.is_empty() {
            return Err(BrokerError::Invalid("no documents to apply".into()));
        }
        let snap = self.reload().await?;
        for (i, r) in resources.iter().enumerate() {
            if let Resource::CredentialRole(c) = r {
                engine_spec(c).map_err(|e| {
                    BrokerError::Invalid(format!(
                        "document {} (CredentialRole `{}`): {e}",
                        i + 1,
                        c.name
                    ))
                })?;
                if let Some(env) = &c.connection_env
                    && !self.inner.config.credential_env.is_set(env)
                {
                    tracing::warn!(
                        role = %c.name,
                        connection_env = %env,
                        "credential role applied, but its connection_env is not set on this server: minting will fail until it is"
                    );
                }
            }
            let role_exists = |c: &str| {
                snap.credential_roles.contains_key(c)
                    || resources
                        .iter()
                        .any(|r| r.kind() == Kind::CredentialRole && r.name() == c)
            };
            if let Resource::Template(t) = r {
                for c in &t.credentials {
                    if !role_exists(c) {
                        return Err(BrokerError::Invalid(format!(
                            "document {} (Template `{}`): field `credentials`: credential role `{c}` does not exist",
                            i + 1,
                            t.name
                        )));
                    }
                }
            }
            let role_engine = |c: &str| {
                resources
                    .iter()
                    .find_map(|r| match r {
                        Resource::CredentialRole(spec) if spec.name == c => Some(spec.engine),
                        _ => None,
                    })
                    .or_else(|| snap.credential_roles.get(c).map(|e| e.spec.engine))
            };
            if let Resource::Upstream(u) = r {
                for c in &u.credentials {
                    if c.value == custos_core::InjectValue::Url
                        && role_engine(&c.role).is_some_and(|e| !e.has_server())
                    {
                        return Err(BrokerError::Invalid(format!(
                            "document {} (Upstream `{}`): field `credentials`: credential role `{}` is a `{}` role, which has no connection URL: inject `value: token`",
                            i + 1,
                            u.name,
                            c.role,
                            role_engine(&c.role).map_or("", |e| e.as_str()),
                        )));
                    }
                    if !role_exists(&c.role) {
                        return Err(BrokerError::Invalid(format!(
                            "document {} (Upstream `{}`): field `credentials`: credential role `{}` does not exist",
                            i + 1,
                            u.name,
                            c.role
                        )));
                    }
                }
            }
            if let Resource::Policy(p) = r {
                custos_policy::check_raw_policy(&p.name, &p.cedar).map_err(|errors| {
                    let all: Vec<String> = errors.iter().take(5).map(ToString::to_string).collect();
                    BrokerError::Invalid(format!(
                        "document {} (Policy `{}`): field `cedar`: {}",
                        i + 1,
                        p.name,
                        all.join("; ")
                    ))
                })?;
            }
            if let Resource::Agent(a) = r {
                parse_public_key_pem(&a.public_key).map_err(|e| {
                    BrokerError::Invalid(format!(
                        "document {} (Agent `{}`): field `public_key`: {e}",
                        i + 1,
                        a.name
                    ))
                })?;
                for t in &a.templates {
                    let in_file = resources
                        .iter()
                        .any(|r| r.kind() == Kind::Template && r.name() == t);
                    if !in_file && !snap.templates.contains_key(t) {
                        return Err(BrokerError::Invalid(format!(
                            "document {} (Agent `{}`): field `templates`: template `{t}` does not exist",
                            i + 1,
                            a.name
                        )));
                    }
                }
            }
        }
        if let Some((template, a, b)) = two_bare_upstreams(&snap, &resources) {
            return Err(BrokerError::Invalid(format!(
                "Template `{template}` would reach upstreams `{a}` and `{b}`, both exposed without a prefix (`prefix: false`): their tools could share names; give one of them a prefix or keep it out of the template"
            )));
        }
        let mut ordered = resources;
        ordered.sort_by_key(|r| Kind::ALL.iter().position(|k| *k == r.kind()));
        let items: Vec<ResourceWrite> = ordered
            .iter()
            .map(|r| ResourceWrite {
                kind: r.kind().as_str().to_owned(),
                name: r.name().to_owned(),
                spec: r.spec_json(),
                uid_if_created: new_id(r.kind().id_prefix()),
            })
            .collect();
        let now = self.inner.clock.now_ms();
        let changes = self
            .inner
            .store
            .apply_resources(&items, &op.name, now)
            .await?
            .into_iter()
            .map(change_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.reload().await?;
        for c in changes.iter().filter(|c| c.op != ChangeOp::Unchanged) {
            self.record(registry_event(op, c)).await?;
        }
        Ok(ApplyOutcome { changes })
    }

    /// Deletes one resource.
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] when it does not exist; [`BrokerError::Forbidden`] without the admin role.
    pub async fn delete(
        &self,
        op: &Operator,
        kind: Kind,
        name: &str,
    ) -> Result<Change, BrokerError> {
        op.require(Permission::Administer)?;
        let now = self.inner.clock.now_ms();
        let change = self
            .inner
            .store
            .delete_resource(kind.as_str(), name, &op.name, now)
            .await?
            .map(change_from_row)
            .transpose()?
            .ok_or_else(|| BrokerError::NotFound(format!("{kind} `{name}` not found")))?;
        self.reload().await?;
        self.record(registry_event(op, &change)).await?;
        Ok(change)
    }

    /// Resources of a kind, or one by name.
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] when a named resource does not exist.
    pub async fn get(
        &self,
        op: &Operator,
        kind: Kind,
        name: Option<&str>,
    ) -> Result<Vec<StoredResource>, BrokerError> {
        op.require(Permission::Read)?;
        let rows = match name {
            Some(n) => {
                let row = self
                    .inner
                    .store
                    .get_resource(kind.as_str(), n)
                    .await?
                    .ok_or_else(|| BrokerError::NotFound(format!("{kind} `{n}` not found")))?;
                vec![row]
            }
            None => self.inner.store.list_resources(kind.as_str()).await?,
        };
        rows.into_iter().map(resource_from_row).collect()
    }

    /// Suspends or resumes an agent. A suspended agent's tokens are refused at once.
    /// Returns the agent's status as written.
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] for an unknown agent; [`BrokerError::Forbidden`] without the admin role.
    pub async fn set_agent_suspended(
        &self,
        op: &Operator,
        agent: &str,
        suspended: bool,
    ) -> Result<AgentStatus, BrokerError> {
        op.require(Permission::Administer)?;
        if self
            .inner
            .store
            .get_resource(Kind::Agent.as_str(), agent)
            .await?
            .is_none()
        {
            return Err(BrokerError::NotFound(format!("Agent `{agent}` not found")));
        }
        let now = self.inner.clock.now_ms();
        self.inner
            .store
            .set_agent_suspended(agent, suspended, &op.name, now)
            .await?;
        self.reload().await?;
        let mut e = AuditEvent::new(if suspended {
            EventKind::AgentSuspend
        } else {
            EventKind::AgentResume
        });
        e.actor = Some(op.name.clone());
        e.agent = Some(agent.to_owned());
        self.record(e).await?;
        if suspended {
            // Its tokens are refused from now on; the credentials it holds go too.
            if let Err(e) = self.revoke_agent_leases(agent).await {
                tracing::warn!(agent, error = %e, "could not revoke a suspended agent's leases; they are revoked at their expiry");
            }
        }
        Ok(AgentStatus {
            name: agent.to_owned(),
            suspended,
            updated_at: now,
            updated_by: op.name.clone(),
        })
    }
}

fn registry_event(op: &Operator, c: &Change) -> AuditEvent {
    let mut e = AuditEvent::new(EventKind::RegistryChange);
    e.actor = Some(op.name.clone());
    e.detail = Some(Detail::RegistryChange {
        op: c.op.as_str().to_owned(),
        resource_kind: c.kind.as_str().to_owned(),
        name: c.name.clone(),
        id: c.id.clone(),
        version: c.version,
    });
    e
}
