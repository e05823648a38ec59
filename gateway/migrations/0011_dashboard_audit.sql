-- What dashboard users did (gateway/dashboard/audit.py, docs/dashboard.md "Audit"): every
-- state-changing action and every export, with the acting user, the role they had, the client
-- address, the action and its scope. Written by the dashboard right after the action's own
-- transaction commits (an export: before its file is sent). Rows older than 400 days are
-- deleted as new ones are written.
CREATE TABLE dashboard_audit (
    audit_id            INTEGER PRIMARY KEY,
    at_ms               INTEGER NOT NULL,
    user_id             INTEGER REFERENCES dashboard_users (user_id) ON DELETE SET NULL,
    username            TEXT,                   -- NULL: the anonymous loopback view
    role                TEXT NOT NULL,          -- viewer, operator, admin or anonymous
    address             TEXT NOT NULL,          -- the client's address as the dashboard saw it
    action              TEXT NOT NULL,          -- export, retry, acknowledge, assign, rotate, ...
    scope               TEXT NOT NULL           -- JSON: date range and class, target, reader, ...
);
CREATE INDEX dashboard_audit_time ON dashboard_audit (at_ms);
