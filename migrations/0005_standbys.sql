-- Warm standby VMs for overlay sessions (daemon/src/service/standby.rs): a base's
-- snapshot restored and paused, its session directory ready, waiting to become the next
-- overlay session on that base. Rows exist so that a daemon that died with one running
-- finds and destroys its VM at the next start (sessions/<id> is then unowned: removed).
CREATE TABLE standbys (
    id         TEXT PRIMARY KEY, -- the id its session will have; the VM is cloudlet-<id>
    base_id    TEXT NOT NULL REFERENCES bases (id), -- discarded before its base goes
    vm_name    TEXT NOT NULL,
    created_at TEXT NOT NULL
);
