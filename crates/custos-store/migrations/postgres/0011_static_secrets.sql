-- Static secrets: one value per `static` credential role, sealed (AES-256-GCM envelope bound
-- to `static:<role>`) under the key-encryption key; never stored in clear.
CREATE TABLE static_secrets (
    role TEXT PRIMARY KEY,
    sealed TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);
