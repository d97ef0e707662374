-- Tool pinning: the digest of each upstream tool's definition (name, title, description,
-- input and output schema, annotations) as an operator approved it (or, with first-use
-- pinning, as first seen). A tool whose definition later differs is hidden and refused until
-- approved again; `observed_digest` keeps the changed definition last seen, so the change is
-- recorded once.
CREATE TABLE tool_pins (
    upstream        TEXT    NOT NULL,
    tool            TEXT    NOT NULL,
    digest          TEXT    NOT NULL,
    pinned_at       BIGINT  NOT NULL,
    pinned_by       TEXT    NOT NULL,
    observed_digest TEXT,
    observed_at     BIGINT,
    PRIMARY KEY (upstream, tool)
);
