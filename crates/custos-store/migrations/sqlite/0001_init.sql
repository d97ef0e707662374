-- Custos schema, SQLite dialect. Times are Unix milliseconds.
CREATE TABLE resources (
    kind        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    spec        TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL,
    updated_by  TEXT    NOT NULL,
    PRIMARY KEY (kind, name)
);

CREATE TABLE resource_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    op          TEXT    NOT NULL,
    spec        TEXT,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL
);
CREATE INDEX resource_history_name ON resource_history (kind, name, version);

CREATE TABLE agent_status (
    name        TEXT    PRIMARY KEY,
    suspended   INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    updated_by  TEXT    NOT NULL
);

CREATE TABLE operators (
    name        TEXT    PRIMARY KEY,
    role        TEXT    NOT NULL,
    token_hash  TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    created_by  TEXT    NOT NULL
);

CREATE TABLE tasks (
    id           TEXT    PRIMARY KEY,
    agent        TEXT    NOT NULL,
    template     TEXT    NOT NULL,
    template_version INTEGER NOT NULL,
    initiator    TEXT    NOT NULL,
    on_behalf_of TEXT    NOT NULL,
    purpose      TEXT,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    state        TEXT    NOT NULL,
    ended_at     INTEGER,
    ended_by     TEXT
);
CREATE INDEX tasks_agent ON tasks (agent, state);

CREATE TABLE used_jti (
    jti         TEXT    PRIMARY KEY,
    agent       TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL
);

CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    actor       TEXT,
    initiator   TEXT,
    agent       TEXT,
    task        TEXT,
    template    TEXT,
    tool        TEXT,
    upstream    TEXT,
    arg_digest  TEXT,
    decision    TEXT,
    tier        INTEGER,
    reason      TEXT,
    outcome     TEXT,
    latency_us  INTEGER,
    detail      TEXT
);
CREATE INDEX audit_log_task ON audit_log (task, seq);

CREATE TABLE audit_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         INTEGER NOT NULL,
    hash        TEXT    NOT NULL
);
