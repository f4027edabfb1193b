-- Idempotency keys of POST /synthesis and /synthesis/upload: a request retried with the
-- same key and the same bearer token gets the session the first one started, never a
-- second VM. Neither the key nor the token is stored, only a hash of both.
CREATE TABLE idempotency_keys (
    key_hash     TEXT PRIMARY KEY,
    session_id   TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_unix INTEGER NOT NULL
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_unix);
