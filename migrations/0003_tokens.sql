-- Per-device API tokens with roles. Only the blake3 hash of a secret is stored; a token is
-- never deleted, only revoked (its row keeps the sessions and overlays it owns named).
-- Names are unique among live tokens, so a revoked `phone-7` can be issued again.
CREATE TABLE tokens (
    id              TEXT PRIMARY KEY,           -- UUIDv7
    name            TEXT NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('admin', 'device')),
    secret_hash     TEXT NOT NULL UNIQUE,       -- hex blake3 of the secret
    created_at      TEXT NOT NULL,              -- RFC 3339 UTC
    last_used_at    TEXT,                       -- updated at most once a minute
    revoked_at      TEXT
);
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;

-- Who started a session / made an overlay. NULL for rows from before tokens existed: those
-- belong to admins only.
ALTER TABLE sessions ADD COLUMN owner_token TEXT REFERENCES tokens (id);
ALTER TABLE overlays ADD COLUMN owner_token TEXT REFERENCES tokens (id);
CREATE INDEX sessions_owner ON sessions (owner_token);
CREATE INDEX overlays_owner ON overlays (owner_token);
