//! The audit log's rows and its chain head. Hashing lives in `custos-audit`; this is storage.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use sqlx::{AssertSqlSafe, SqliteConnection};

use crate::{BeginWrite as _, Pool, Store, StoreError, on_pool};

/// Every column of `audit_log`, in one place: the row struct, the `INSERT`, the `SELECT`s,
/// the bind order and the row decoding are all generated from this list.
macro_rules! audit_columns {
    ($m:ident $(, $arg:expr)*) => {
        $m!($($arg,)* seq, at, prev_hash, hash, format, kind, actor, initiator, agent, task, template,
            call_id, tool, upstream, arg_digest, decision, tier, reason, outcome, latency_us,
            policy_version, detail)
    };
}

/// One stored audit record. Which fields its hash covers depends on its `format`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// Unix ms.
    pub at: i64,
    /// The previous record's hash (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over the canonical encoding of every other field (see `custos-audit`).
    pub hash: String,
    /// The record format (1: the foundation's; 2: adds `call_id` and `policy_version`).
    pub format: i64,
    /// What happened: `tool_call`, `tool_result`, `auth_failures`, `task_start`, ...
    pub kind: String,
    /// The operator who acted, when an operator did.
    pub actor: Option<String>,
    /// The human or event on whose behalf.
    pub initiator: Option<String>,
    /// The agent.
    pub agent: Option<String>,
    /// The task id.
    pub task: Option<String>,
    /// The template.
    pub template: Option<String>,
    /// The tool call a decision and its result share.
    pub call_id: Option<String>,
    /// The tool (exposed name).
    pub tool: Option<String>,
    /// The upstream.
    pub upstream: Option<String>,
    /// SHA-256 of the canonical arguments.
    pub arg_digest: Option<String>,
    /// `allow`, `deny` or `hold`.
    pub decision: Option<String>,
    /// 1 to 4.
    pub tier: Option<i64>,
    /// Why: a stable reason code.
    pub reason: Option<String>,
    /// How it ended.
    pub outcome: Option<String>,
    /// Time spent, microseconds.
    pub latency_us: Option<i64>,
    /// The registry policy version a decision was made under.
    pub policy_version: Option<i64>,
    /// Kind-specific details, JSON.
    pub detail: Option<String>,
}

/// The last record's position and hash, kept beside the log so a truncated tail is caught.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditHead {
    /// The last sequence number.
    pub seq: i64,
    /// The last hash.
    pub hash: String,
}

macro_rules! column_list {
    ($($c:ident),* $(,)?) => { concat!($(stringify!($c), ","),*) };
}
macro_rules! column_count {
    ($($c:ident),* $(,)?) => { [$(stringify!($c)),*].len() };
}
/// `seq,at,…,detail` (with a trailing comma, cut off by [`columns`]).
const COLUMN_LIST: &str = audit_columns!(column_list);
/// Bound parameters per row.
const COLUMNS: usize = audit_columns!(column_count);

fn columns() -> &'static str {
    COLUMN_LIST.trim_end_matches(',')
}

fn insert_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let params: Vec<String> = (1..=COLUMNS).map(|i| format!("${i}")).collect();
        format!(
            "INSERT INTO audit_log ({}) VALUES ({})",
            columns(),
            params.join(", ")
        )
    })
}

fn select_sql(filter: &str) -> String {
    format!("SELECT {} FROM audit_log {filter}", columns())
}
const HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
const SET_HEAD: &str = "INSERT INTO audit_head (id, seq, hash) VALUES (1, $1, $2) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash";

// Any fixed number: serialises appends from several replicas sharing one PostgreSQL.
const PG_AUDIT_LOCK: i64 = 0x4355_5354_4f53;

macro_rules! decode_row {
    ($r:expr, $($c:ident),* $(,)?) => {{
        let r = $r;
        Ok::<_, StoreError>(AuditRow { $($c: r.try_get(stringify!($c))?,)* })
    }};
}
macro_rules! row_to_audit {
    ($r:expr) => {
        audit_columns!(decode_row, $r)
    };
}

macro_rules! bind_fields {
    ($q:expr, $r:expr, $($c:ident),* $(,)?) => {{
        let r = $r;
        $q$(.bind(&r.$c))*
    }};
}
/// Binds one row's columns, in [`audit_columns!`] order, to a query of either backend.
macro_rules! bind_row {
    ($q:expr, $r:expr) => {
        audit_columns!(bind_fields, $q, $r)
    };
}

macro_rules! insert_row {
    ($tx:expr, $r:expr) => {{
        bind_row!(sqlx::query(insert_sql()), $r)
            .execute(&mut *$tx)
            .await?;
    }};
}

// SQLite appends cost round trips to the connection's worker thread (a thread hand-off each
// way), not statements. The general path takes two: (1) `BEGIN IMMEDIATE` and the head read,
// (2) the rows, the new head and `COMMIT`. The appender's usual path takes one: it builds the
// rows on the head it committed last and sends `BEGIN IMMEDIATE`, a check that this is still
// the stored head (it fails the transaction otherwise), the rows, the new head and `COMMIT`
// together. Rows go in multi-row INSERTs of a few fixed sizes, so only a handful of distinct
// statements are ever prepared (they stay in the connection's statement cache).

/// Rows per multi-row INSERT, largest first; a batch is cut into chunks of these sizes, each
/// one round trip to the connection's thread. The small sizes are there so the batches a
/// sequential caller makes (a call's outcome riding with the next decision: two rows) take
/// one round trip, not two.
const SQLITE_CHUNKS: [usize; 7] = [64, 16, 8, 4, 3, 2, 1];
const SQLITE_BEGIN_AND_HEAD: &str =
    "BEGIN IMMEDIATE; SELECT seq, hash FROM audit_head WHERE id = 1";
/// Fails the statement (NOT NULL on `audit_head.seq`) unless the stored head is the record
/// the first row follows: its parameters are that row's `seq` and `prev_hash`.
const SQLITE_BEGIN_AND_CHECK_HEAD: &str = "BEGIN IMMEDIATE; INSERT INTO audit_head (id, seq, hash) SELECT 1, NULL, NULL WHERE NOT EXISTS (SELECT 1 FROM audit_head WHERE id = 1 AND seq = ? - 1 AND hash = ?); ";

/// The INSERT for `rows` rows; with `first`, preceded by `BEGIN IMMEDIATE` and the head check;
/// with `last`, followed by the head update and `COMMIT`. Parameters are anonymous (`?`),
/// bound in the order they appear: SQLite looks a numbered parameter up by a linear scan of
/// the statement's parameter names, which made binding a 64-row INSERT quadratic.
fn sqlite_insert_sql(rows: usize, first: bool, last: bool) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        let mut out = Vec::new();
        for &n in &SQLITE_CHUNKS {
            for (first, last) in [(false, false), (false, true), (true, false), (true, true)] {
                let mut sql = String::new();
                if first {
                    sql.push_str(SQLITE_BEGIN_AND_CHECK_HEAD);
                }
                sql.push_str(&format!("INSERT INTO audit_log ({}) VALUES ", columns()));
                for r in 0..n {
                    if r > 0 {
                        sql.push_str(", ");
                    }
                    sql.push('(');
                    for c in 1..=COLUMNS {
                        if c > 1 {
                            sql.push_str(", ");
                        }
                        sql.push('?');
                    }
                    sql.push(')');
                }
                if last {
                    sql.push_str(
                        "; INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash; COMMIT",
                    );
                }
                out.push(sql);
            }
        }
        out
    });
    let i = SQLITE_CHUNKS.iter().position(|&n| n == rows).unwrap_or(0);
    all[i * 4 + usize::from(first) * 2 + usize::from(last)].as_str()
}

/// Writes `rows` in chunks; the first chunk opens the transaction (checking the head) when
/// `open`, the last one updates the head and commits.
async fn sqlite_insert_rows(
    conn: &mut SqliteConnection,
    rows: &[AuditRow],
    open: bool,
) -> Result<(), sqlx::Error> {
    let mut rest = rows;
    let mut first = open;
    while !rest.is_empty() {
        let n = SQLITE_CHUNKS
            .iter()
            .copied()
            .find(|&n| n <= rest.len())
            .unwrap_or(1);
        let (chunk, tail) = rest.split_at(n);
        let mut q = sqlx::query(sqlite_insert_sql(n, first, tail.is_empty()));
        if let (true, Some(r)) = (first, chunk.first()) {
            q = q.bind(r.seq).bind(&r.prev_hash);
        }
        for r in chunk {
            q = bind_row!(q, r);
        }
        if let (true, Some(r)) = (tail.is_empty(), chunk.last()) {
            q = q.bind(r.seq).bind(&r.hash);
        }
        q.execute(&mut *conn).await?;
        rest = tail;
        first = false;
    }
    Ok(())
}

/// Whether an error is the head check failing (another writer moved the head).
fn head_moved(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if matches!(db.kind(), sqlx::error::ErrorKind::NotNullViolation)
            && db.message().contains("audit_head"))
}

/// Rolls back after a failed append; false when that could not be confirmed, so the caller
/// must close the connection (which rolls back).
async fn sqlite_rollback(conn: &mut SqliteConnection) -> bool {
    sqlx::query("ROLLBACK").execute(&mut *conn).await.is_ok()
}

/// The general path: reads the head in the transaction, then builds and writes the rows.
/// On error the transaction is rolled back; `Err(_, false)` when that could not be confirmed.
async fn sqlite_append<F>(
    conn: &mut SqliteConnection,
    build: F,
) -> Result<Vec<AuditRow>, (StoreError, bool)>
where
    F: FnOnce(Option<AuditHead>) -> Vec<AuditRow>,
{
    match sqlite_append_in_tx(conn, build).await {
        Ok(rows) => Ok(rows),
        Err(e) => Err((e, sqlite_rollback(conn).await)),
    }
}

async fn sqlite_append_in_tx<F>(
    conn: &mut SqliteConnection,
    build: F,
) -> Result<Vec<AuditRow>, StoreError>
where
    F: FnOnce(Option<AuditHead>) -> Vec<AuditRow>,
{
    // `fetch_all` steps the SELECT to its end, so no statement is left running.
    let head = sqlx::query(SQLITE_BEGIN_AND_HEAD)
        .fetch_all(&mut *conn)
        .await?;
    let head = match head.first() {
        Some(r) => Some(AuditHead {
            seq: r.try_get("seq")?,
            hash: r.try_get("hash")?,
        }),
        None => None,
    };
    let rows = build(head);
    if rows.is_empty() {
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        return Ok(rows);
    }
    sqlite_insert_rows(conn, &rows, false).await?;
    Ok(rows)
}

/// Appends audit records over a connection of its own (SQLite), kept between appends so an
/// append costs no pool round trip, and usually one round trip to the database (see above).
/// For the single audit writer; PostgreSQL appends go through the pool. The connection is
/// detached from the pool (closing the pool does not wait for it) and replaced after a
/// failure that may have left it in a transaction.
pub struct AuditAppender {
    store: Store,
    conn: Option<SqliteConnection>,
    /// The head this appender committed last, if nothing failed since.
    head: Option<AuditHead>,
}

impl std::fmt::Debug for AuditAppender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditAppender").finish_non_exhaustive()
    }
}

impl AuditAppender {
    /// Appends records in one transaction, as [`Store::append_audit`] does. `build` receives
    /// the head to chain from and returns the rows; it is called a second time, with the
    /// stored head, when the head this appender wrote last is no longer the stored one
    /// (another writer appended): nothing from the first call is written then.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails; nothing is appended then.
    pub async fn append<F>(&mut self, mut build: F) -> Result<Vec<AuditRow>, StoreError>
    where
        F: FnMut(Option<AuditHead>) -> Vec<AuditRow>,
    {
        let Pool::Sqlite(pool) = &self.store.pool else {
            return self.store.append_audit(build).await;
        };
        // A handle of its own, so the turn does not hold `self` borrowed.
        let store = self.store.clone();
        let _turn = store.write_turn().await;
        let conn = match &mut self.conn {
            Some(c) => c,
            None => self.conn.insert(pool.acquire().await?.detach()),
        };
        if let Some(head) = self.head.take() {
            let rows = build(Some(head.clone()));
            let Some(last) = rows.last() else {
                self.head = Some(head);
                return Ok(rows);
            };
            let last = AuditHead {
                seq: last.seq,
                hash: last.hash.clone(),
            };
            match sqlite_insert_rows(conn, &rows, true).await {
                Ok(()) => {
                    self.head = Some(last);
                    return Ok(rows);
                }
                Err(e) => {
                    let clean = sqlite_rollback(conn).await;
                    if !(clean && head_moved(&e)) {
                        if !clean {
                            self.close().await;
                        }
                        return Err(e.into());
                    }
                    // Another writer appended: build again on the stored head.
                }
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(StoreError::Corrupt("audit connection lost".into()));
        };
        match sqlite_append(conn, build).await {
            Ok(rows) => {
                self.head = rows.last().map(|r| AuditHead {
                    seq: r.seq,
                    hash: r.hash.clone(),
                });
                Ok(rows)
            }
            Err((e, clean)) => {
                if !clean {
                    self.close().await;
                }
                Err(e)
            }
        }
    }

    async fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            use sqlx::Connection as _;
            let _ = c.close().await;
        }
    }
}

impl Store {
    /// Appends records in one transaction. `build` receives the current head (under the
    /// chain lock) and returns the rows to append, already chained and hashed.
    /// (The audit writer uses [`Store::audit_appender`], which keeps a connection.)
    ///
    /// # Errors
    /// [`StoreError`] when the database fails; nothing is appended then.
    pub async fn append_audit<F>(&self, build: F) -> Result<Vec<AuditRow>, StoreError>
    where
        F: FnOnce(Option<AuditHead>) -> Vec<AuditRow>,
    {
        if let Pool::Sqlite(p) = &self.pool {
            let _turn = self.write_turn().await;
            let mut conn = p.acquire().await?;
            return match sqlite_append(&mut conn, build).await {
                Ok(rows) => Ok(rows),
                Err((e, clean)) => {
                    if !clean {
                        let _ = conn.close().await;
                    }
                    Err(e)
                }
            };
        }
        let is_pg = matches!(self.pool, Pool::Postgres(_));
        let _turn = self.write_turn().await;
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            if is_pg {
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PG_AUDIT_LOCK).execute(&mut *tx).await?;
            }
            let head = match sqlx::query(HEAD).fetch_optional(&mut *tx).await? {
                Some(r) => Some(AuditHead { seq: r.try_get("seq")?, hash: r.try_get("hash")? }),
                None => None,
            };
            let rows = build(head);
            for r in &rows {
                insert_row!(tx, r);
            }
            if let Some(last) = rows.last() {
                sqlx::query(SET_HEAD).bind(last.seq).bind(&last.hash).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(rows)
        })
    }

    /// An appender with a connection of its own, for the audit writer.
    pub fn audit_appender(&self) -> AuditAppender {
        AuditAppender {
            store: self.clone(),
            conn: None,
            head: None,
        }
    }

    /// The stored chain head.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        on_pool!(self, p => match sqlx::query(HEAD).fetch_optional(p).await? {
            Some(r) => Ok(Some(AuditHead { seq: r.try_get("seq")?, hash: r.try_get("hash")? })),
            None => Ok(None),
        })
    }

    /// Records with `seq > after`, in order, at most `limit` (for verifying in pages).
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn audit_page(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        static Q: OnceLock<String> = OnceLock::new();
        let q = Q.get_or_init(|| select_sql("WHERE seq > $1 ORDER BY seq LIMIT $2"));
        on_pool!(self, p => {
            let rows = sqlx::query(AssertSqlSafe(q.as_str())).bind(after).bind(limit).fetch_all(p).await?;
            rows.into_iter().map(|r| row_to_audit!(r)).collect()
        })
    }

    /// The latest `limit` tool-call records (decisions and results) of one task, newest first:
    /// what an approver sees of the task's history, without reading all of it.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn recent_tool_records(
        &self,
        task: &str,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        static Q: OnceLock<String> = OnceLock::new();
        let q = Q.get_or_init(|| {
            select_sql("WHERE task = $1 AND kind IN ('tool_call', 'tool_result') ORDER BY seq DESC LIMIT $2")
        });
        on_pool!(self, p => {
            let rows = sqlx::query(AssertSqlSafe(q.as_str())).bind(task).bind(limit).fetch_all(p).await?;
            rows.into_iter().map(|r| row_to_audit!(r)).collect()
        })
    }

    /// Every record of one task, in order.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn audit_for_task(&self, task: &str) -> Result<Vec<AuditRow>, StoreError> {
        static Q: OnceLock<String> = OnceLock::new();
        let q = Q.get_or_init(|| select_sql("WHERE task = $1 ORDER BY seq"));
        on_pool!(self, p => {
            let rows = sqlx::query(AssertSqlSafe(q.as_str())).bind(task).fetch_all(p).await?;
            rows.into_iter().map(|r| row_to_audit!(r)).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Durability;

    fn row(seq: i64, prev_hash: String) -> AuditRow {
        AuditRow {
            seq,
            at: 1_000 + seq,
            prev_hash,
            hash: format!("h{seq}"),
            format: 2,
            kind: "tool_call".into(),
            actor: None,
            initiator: Some("alice@example.com".into()),
            agent: Some("agent-a".into()),
            task: Some(format!("task_{}", seq % 3)),
            template: None,
            call_id: Some(format!("call_{seq}")),
            tool: Some("fx__echo \u{0} ✓ 'quoted'".into()),
            upstream: Some("fx".into()),
            arg_digest: None,
            decision: Some("allow".into()),
            tier: Some(seq % 4 + 1),
            reason: None,
            outcome: Some("ok".into()),
            latency_us: Some(seq * 7),
            policy_version: Some(seq / 10),
            detail: (seq % 2 == 0).then(|| r#"{"k":[1,2]}"#.to_owned()),
        }
    }

    fn chain(head: Option<AuditHead>, n: usize) -> Vec<AuditRow> {
        let (mut seq, mut prev) = head.map_or((0, "genesis".to_owned()), |h| (h.seq, h.hash));
        (0..n)
            .map(|_| {
                seq += 1;
                let r = row(seq, std::mem::take(&mut prev));
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[tokio::test]
    async fn the_appender_writes_batches_of_any_size_and_goes_on_after_a_failure() {
        let dir = std::env::temp_dir().join(format!(
            "custos-appender-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let url = format!("sqlite:{}", dir.join("a.db").display());
        let store = Store::connect(&url, Durability::Process)
            .await
            .expect("connect");
        let mut appender = store.audit_appender();
        let mut written = Vec::new();
        // Sizes that exercise every chunk size, alone and combined.
        for n in [1, 2, 3, 4, 5, 7, 8, 11, 16, 21, 64, 85, 150, 512] {
            let rows = appender.append(|h| chain(h, n)).await.expect("append");
            assert_eq!(rows.len(), n);
            written.extend(rows);
        }
        let total = i64::try_from(written.len()).expect("count");
        assert_eq!(store.audit_page(0, i64::MAX).await.expect("read"), written);
        let head = AuditHead {
            seq: total,
            hash: format!("h{total}"),
        };
        assert_eq!(store.audit_head().await.expect("head"), Some(head.clone()));

        // A batch whose 70th row reuses a sequence number (second chunk): nothing is written.
        let err = appender
            .append(|h| {
                let mut rows = chain(h, 70);
                rows[69].seq = 1;
                rows
            })
            .await
            .expect_err("duplicate seq");
        assert_eq!(err.reason(), "store_unavailable");
        assert_eq!(store.audit_page(0, i64::MAX).await.expect("read"), written);
        assert_eq!(store.audit_head().await.expect("head"), Some(head.clone()));

        // The same appender, and the pool path, carry on from the stored head.
        let mut seen = None;
        let next = appender
            .append(|h| {
                seen = h.clone();
                chain(h, 2)
            })
            .await
            .expect("append after failure");
        assert_eq!(seen, Some(head));
        assert_eq!(next[0].seq, total + 1);
        let more = store
            .append_audit(|h| chain(h, 65))
            .await
            .expect("pool append");
        assert_eq!(more[0].prev_hash, next[1].hash);
        assert!(
            appender
                .append(|_| Vec::new())
                .await
                .expect("empty")
                .is_empty()
        );
        assert_eq!(
            store.audit_head().await.expect("head").map(|h| h.seq),
            Some(total + 67)
        );

        // Another writer moved the head since this appender's last commit: the first build
        // (on the head it wrote last) is refused inside the transaction, the second is on the
        // stored head; nothing of the first is left.
        let mut heads = Vec::new();
        let rows = appender
            .append(|h| {
                heads.push(h.clone().map(|h| h.seq));
                chain(h, 3)
            })
            .await
            .expect("append after another writer");
        assert_eq!(heads, [Some(total + 2), Some(total + 67)]);
        assert_eq!(rows[0].prev_hash, more[64].hash);
        let all = store.audit_page(0, i64::MAX).await.expect("read");
        assert_eq!(all.len(), usize::try_from(total + 70).expect("count"));
        for w in all.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + 1);
            assert_eq!(w[1].prev_hash, w[0].hash);
        }
        // Then one build again.
        heads.clear();
        appender
            .append(|h| {
                heads.push(h.clone().map(|h| h.seq));
                chain(h, 1)
            })
            .await
            .expect("append");
        assert_eq!(heads, [Some(total + 70)]);
        store.close().await;
        drop(appender);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
