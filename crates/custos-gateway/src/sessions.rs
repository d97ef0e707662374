//! Session-era MCP sessions: which task each belongs to, bounded per task and in all, expired
//! when idle. One agent opening sessions in a loop evicts only its own task's oldest ones.

use custos_broker::{ClientCaps, LogLevel};
use std::collections::{HashMap, VecDeque};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Sessions kept at most, across all tasks.
pub const MAX_SESSIONS: usize = 50_000;
/// Sessions one task may hold; opening another evicts that task's least recently used.
pub const MAX_SESSIONS_PER_TASK: usize = 32;
/// A session unused this long is gone (30 minutes).
pub const SESSION_IDLE_MS: i64 = 30 * 60 * 1000;

/// The gateway's session metrics.
#[derive(Debug, Clone, Default)]
pub struct SessionMetrics {
    created: Counter,
    evicted: Counter,
    open: Gauge,
}

impl SessionMetrics {
    /// Registers the session metrics under `custos_mcp_sessions_`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "custos_mcp_sessions_created",
            "MCP sessions opened (initialize)",
            self.created.clone(),
        );
        registry.register(
            "custos_mcp_sessions_evicted",
            "MCP sessions dropped to make room (per-task or global cap)",
            self.evicted.clone(),
        );
        registry.register(
            "custos_mcp_sessions_open",
            "MCP sessions currently held",
            self.open.clone(),
        );
    }
}

#[derive(Debug, Clone)]
struct Session {
    task_id: String,
    /// The task's template: which upstreams' announcements the session gets.
    template: String,
    state: SessionState,
    last_used_ms: i64,
    /// The client's standalone event stream (`GET /mcp`), if it opened one: dropped with the
    /// session, which ends the stream.
    stream: Option<tokio::sync::mpsc::Sender<serde_json::Value>>,
    /// The resources it subscribed to, as (upstream, URI).
    subscriptions: std::collections::HashSet<(String, String)>,
}

/// The most resources one session may be subscribed to.
pub(crate) const MAX_SUBSCRIPTIONS: usize = 64;

/// What a session agreed on.
#[derive(Debug, Clone)]
pub(crate) struct SessionState {
    /// The negotiated protocol version.
    pub(crate) version: String,
    /// The lowest log level its client wants messages of (`logging/setLevel`; every level
    /// until it sets one).
    pub(crate) log_level: LogLevel,
    /// What its client declared it can do for a server.
    pub(crate) caps: ClientCaps,
}

/// The session table.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_id: HashMap<String, Session>,
    by_task: HashMap<String, VecDeque<String>>,
    metrics: SessionMetrics,
}

impl Sessions {
    pub(crate) fn new(metrics: SessionMetrics) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    /// Opens a session for `task`, evicting the task's least recently used one past its cap
    /// and the least recently used of all past the global cap.
    pub(crate) fn open(
        &mut self,
        sid: String,
        (task, template): (&str, &str),
        version: &str,
        caps: ClientCaps,
        now_ms: i64,
    ) {
        let mine = self.by_task.entry(task.to_owned()).or_default();
        while mine.len() >= MAX_SESSIONS_PER_TASK {
            // Front = least recently used of this task (kept in use order).
            if let Some(old) = mine.pop_front() {
                self.by_id.remove(&old);
                self.metrics.evicted.inc();
            }
        }
        if self.by_id.len() >= MAX_SESSIONS {
            self.expire(now_ms);
        }
        if self.by_id.len() >= MAX_SESSIONS
            && let Some(oldest) = self
                .by_id
                .iter()
                .min_by_key(|(_, s)| s.last_used_ms)
                .map(|(k, _)| k.clone())
        {
            self.remove(&oldest);
            self.metrics.evicted.inc();
        }
        self.by_task
            .entry(task.to_owned())
            .or_default()
            .push_back(sid.clone());
        self.by_id.insert(
            sid,
            Session {
                task_id: task.to_owned(),
                template: template.to_owned(),
                stream: None,
                subscriptions: std::collections::HashSet::new(),
                state: SessionState {
                    version: version.to_owned(),
                    log_level: LogLevel::Debug,
                    caps,
                },
                last_used_ms: now_ms,
            },
        );
        self.metrics.created.inc();
        self.set_open();
    }

    /// Gives `sid` (if it belongs to `task`) a standalone event stream, replacing the one it
    /// had (that one ends).
    pub(crate) fn attach_stream(
        &mut self,
        sid: &str,
        task: &str,
        tx: tokio::sync::mpsc::Sender<serde_json::Value>,
    ) -> bool {
        match self.by_id.get_mut(sid).filter(|s| s.task_id == task) {
            Some(s) => {
                s.stream = Some(tx);
                true
            }
            None => false,
        }
    }

    /// The standalone streams of the sessions whose template `reaches`.
    pub(crate) fn streams(
        &self,
        reaches: impl Fn(&str) -> bool,
    ) -> Vec<tokio::sync::mpsc::Sender<serde_json::Value>> {
        self.by_id
            .values()
            .filter(|s| reaches(&s.template))
            .filter_map(|s| s.stream.clone())
            .collect()
    }

    /// Records that `sid` (of `task`) subscribed to `uri` of `upstream`; false past
    /// [`MAX_SUBSCRIPTIONS`] or for another task's session.
    pub(crate) fn subscribe(&mut self, sid: &str, task: &str, upstream: &str, uri: &str) -> bool {
        match self.by_id.get_mut(sid).filter(|s| s.task_id == task) {
            Some(s) if s.subscriptions.len() < MAX_SUBSCRIPTIONS => {
                s.subscriptions
                    .insert((upstream.to_owned(), uri.to_owned()));
                true
            }
            _ => false,
        }
    }

    /// Ends `sid`'s subscription to `uri`; whether it had one.
    pub(crate) fn unsubscribe(&mut self, sid: &str, task: &str, uri: &str) -> bool {
        match self.by_id.get_mut(sid).filter(|s| s.task_id == task) {
            Some(s) => {
                let before = s.subscriptions.len();
                s.subscriptions.retain(|(_, u)| u != uri);
                s.subscriptions.len() != before
            }
            None => false,
        }
    }

    /// The standalone streams of the sessions subscribed to `uri` of `upstream`.
    pub(crate) fn subscribed_streams(
        &self,
        upstream: &str,
        uri: &str,
    ) -> Vec<tokio::sync::mpsc::Sender<serde_json::Value>> {
        let key = (upstream.to_owned(), uri.to_owned());
        self.by_id
            .values()
            .filter(|s| s.subscriptions.contains(&key))
            .filter_map(|s| s.stream.clone())
            .collect()
    }

    /// Sets the log level of `sid` if it belongs to `task`.
    pub(crate) fn set_log_level(&mut self, sid: &str, task: &str, level: LogLevel) {
        if let Some(s) = self.by_id.get_mut(sid).filter(|s| s.task_id == task) {
            s.state.log_level = level;
        }
    }

    /// What `sid` agreed on, when it belongs to `task` and is not idle-expired; marks it used.
    pub(crate) fn use_session(
        &mut self,
        sid: &str,
        task: &str,
        now_ms: i64,
    ) -> Option<SessionState> {
        let s = self.by_id.get_mut(sid)?;
        if s.task_id != task {
            return None;
        }
        if now_ms - s.last_used_ms > SESSION_IDLE_MS {
            self.remove(sid);
            return None;
        }
        s.last_used_ms = now_ms;
        let state = s.state.clone();
        if let Some(q) = self.by_task.get_mut(task)
            && let Some(i) = q.iter().position(|x| x == sid)
        {
            q.remove(i);
            q.push_back(sid.to_owned());
        }
        Some(state)
    }

    /// Ends `sid` if it belongs to `task`.
    pub(crate) fn close(&mut self, sid: &str, task: &str) -> bool {
        if self.by_id.get(sid).is_some_and(|s| s.task_id == task) {
            self.remove(sid);
            true
        } else {
            false
        }
    }

    /// Drops every session of `task` (it ended).
    pub(crate) fn close_task(&mut self, task: &str) {
        for sid in self.by_task.remove(task).unwrap_or_default() {
            self.by_id.remove(&sid);
        }
        self.set_open();
    }

    fn expire(&mut self, now_ms: i64) {
        let idle: Vec<String> = self
            .by_id
            .iter()
            .filter(|(_, s)| now_ms - s.last_used_ms > SESSION_IDLE_MS)
            .map(|(k, _)| k.clone())
            .collect();
        for sid in idle {
            self.remove(&sid);
        }
    }

    fn remove(&mut self, sid: &str) {
        if let Some(s) = self.by_id.remove(sid)
            && let Some(q) = self.by_task.get_mut(&s.task_id)
        {
            q.retain(|x| x != sid);
            if q.is_empty() {
                self.by_task.remove(&s.task_id);
            }
        }
        self.set_open();
    }

    fn set_open(&self) {
        self.metrics
            .open
            .set(i64::try_from(self.by_id.len()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_task_evicts_only_its_own_sessions() {
        let mut s = Sessions::default();
        s.open(
            "other".into(),
            ("task_b", "tpl"),
            "2025-11-25",
            ClientCaps::default(),
            0,
        );
        for i in 0..1000 {
            s.open(
                format!("s{i}"),
                ("task_a", "tpl"),
                "2025-11-25",
                ClientCaps::default(),
                i,
            );
        }
        assert!(
            s.use_session("other", "task_b", 1000).is_some(),
            "another task's session survives"
        );
        assert_eq!(s.by_task["task_a"].len(), MAX_SESSIONS_PER_TASK);
        assert!(
            s.use_session("s0", "task_a", 1000).is_none(),
            "the oldest of the flooding task is gone"
        );
        assert!(s.use_session("s999", "task_a", 1000).is_some());
        assert!(
            s.use_session("s999", "task_b", 1000).is_none(),
            "never across tasks"
        );
    }

    #[test]
    fn least_recently_used_is_evicted_and_idle_sessions_expire() {
        let mut s = Sessions::default();
        for i in 0..MAX_SESSIONS_PER_TASK {
            s.open(format!("s{i}"), ("t", "tpl"), "v", ClientCaps::default(), 0);
        }
        assert!(
            s.use_session("s0", "t", 10).is_some(),
            "s0 used: now the most recent"
        );
        s.open("new".into(), ("t", "tpl"), "v", ClientCaps::default(), 20);
        assert!(
            s.use_session("s0", "t", 30).is_some(),
            "a used session is kept"
        );
        assert!(
            s.use_session("s1", "t", 30).is_none(),
            "the least recently used went"
        );
        assert!(
            s.use_session("new", "t", 40 + SESSION_IDLE_MS + 1)
                .is_none(),
            "idle expiry"
        );
        s.close_task("t");
        assert!(s.by_id.is_empty() && s.by_task.is_empty());
    }
}
