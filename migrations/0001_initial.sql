-- The catalogue: base VMs, overlays and sessions. Image data lives in files under the
-- daemon's data directory; rows point at them. Rows are created in a transient state
-- ('creating') before their files are complete and marked 'ready' after, and marked
-- 'deleting' before their files are removed, so that startup reconciliation can finish
-- or undo whatever a crash interrupted.

CREATE TABLE bases (
    id              TEXT PRIMARY KEY,           -- hex blake3 of the hash list (content id)
    name            TEXT NOT NULL UNIQUE,
    state           TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'deleting')),
    source_path     TEXT,                       -- the disk path the user gave (Elijah names bases by it)
    dir             TEXT NOT NULL,              -- directory owning every file below
    disk_path       TEXT NOT NULL,
    memory_pages_path TEXT,                     -- NULL for a disk-only base
    memory_meta_path  TEXT,
    hash_list_path  TEXT NOT NULL,
    index_path      TEXT NOT NULL,
    disk_size       INTEGER NOT NULL,
    memory_size     INTEGER NOT NULL DEFAULT 0, -- guest RAM bytes (sum of RAM blocks)
    chunk_size      INTEGER NOT NULL DEFAULT 4096,
    disk_chunks     INTEGER NOT NULL,
    memory_pages    INTEGER NOT NULL DEFAULT 0,
    domain_xml      TEXT NOT NULL DEFAULT '',   -- domain XML template the base runs with
    vcpus           INTEGER NOT NULL DEFAULT 1,
    guest_ports     TEXT NOT NULL DEFAULT '[]', -- JSON array of guest TCP ports the app listens on
    created_at      TEXT NOT NULL               -- RFC 3339 UTC
);

CREATE TABLE overlays (
    id              TEXT PRIMARY KEY,           -- UUIDv7
    base_id         TEXT NOT NULL REFERENCES bases (id) ON DELETE RESTRICT,
    name            TEXT,
    state           TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'deleting')),
    file_path       TEXT NOT NULL,
    file_size       INTEGER NOT NULL DEFAULT 0,
    disk_only       INTEGER NOT NULL DEFAULT 0,
    modified_memory_pages INTEGER NOT NULL DEFAULT 0,
    modified_disk_chunks  INTEGER NOT NULL DEFAULT 0,
    stats           TEXT NOT NULL DEFAULT '{}', -- JSON: counts per encoding, sizes, encode timings
    guest_ports     TEXT NOT NULL DEFAULT '[]',
    session_id      TEXT,                       -- the overlay session that made it, if any
    created_at      TEXT NOT NULL
);
CREATE INDEX overlays_base ON overlays (base_id);

CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,           -- UUIDv7
    kind            TEXT NOT NULL CHECK (kind IN ('base', 'overlay', 'synthesis')),
    state           TEXT NOT NULL CHECK (state IN
                        ('starting', 'running', 'saving', 'encoding', 'decoding', 'restoring',
                         'stopping', 'finished', 'stopped', 'failed')),
    base_id         TEXT REFERENCES bases (id) ON DELETE SET NULL,
    overlay_id      TEXT REFERENCES overlays (id) ON DELETE SET NULL,
    vm_name         TEXT UNIQUE,                -- cloudlet-<id>: lets reconciliation find our domains
    run_dir         TEXT,                       -- per-session files (disk, save file, console socket)
    console_path    TEXT,
    vnc_port        INTEGER,
    host_ports      TEXT NOT NULL DEFAULT '{}', -- JSON: guest port -> host port
    timings         TEXT NOT NULL DEFAULT '{}', -- JSON: step -> milliseconds
    error           TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    ended_at        TEXT
);
CREATE INDEX sessions_state ON sessions (state);
CREATE INDEX sessions_base ON sessions (base_id);
