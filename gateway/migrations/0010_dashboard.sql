-- The operations dashboard (gateway/dashboard/, docs/dashboard.md): its users, their server-side
-- sessions and the login attempts the rate limit counts. Only the dashboard writes these tables,
-- in short transactions on its own connection; the ingest never touches them.

-- Passwords only as argon2id PHC strings ($argon2id$v=19$m=...,t=...,p=...$salt$hash).
CREATE TABLE dashboard_users (
    user_id             INTEGER PRIMARY KEY,
    username            TEXT NOT NULL UNIQUE,   -- lower case a-z 0-9 . _ -
    password_hash       TEXT NOT NULL,
    role                TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    disabled            INTEGER NOT NULL DEFAULT 0,
    created_ms          INTEGER NOT NULL,
    password_changed_ms INTEGER NOT NULL,
    last_login_ms       INTEGER
);

-- A session is found by the SHA-256 of its cookie's token: a copy of the database does not let
-- anyone log in. It ends at expires_ms (absolute) or idle_ms after last_seen_ms.
CREATE TABLE dashboard_sessions (
    token_sha256        BLOB PRIMARY KEY,
    user_id             INTEGER NOT NULL REFERENCES dashboard_users (user_id) ON DELETE CASCADE,
    csrf_token          TEXT NOT NULL,
    created_ms          INTEGER NOT NULL,
    last_seen_ms        INTEGER NOT NULL,
    expires_ms          INTEGER NOT NULL,
    address             TEXT NOT NULL
);
CREATE INDEX dashboard_sessions_user ON dashboard_sessions (user_id);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_ms);

-- Every login attempt: the rate limit counts recent failures per user name and per client
-- address, so a restart does not reset it. user_key is the SHA-256 of the name as typed
-- (lower case): a password typed into the name field is not kept in clear.
CREATE TABLE dashboard_login_attempts (
    attempt_id          INTEGER PRIMARY KEY,
    at_ms               INTEGER NOT NULL,
    user_key            TEXT NOT NULL,
    user_id             INTEGER REFERENCES dashboard_users (user_id) ON DELETE SET NULL,
    address             TEXT NOT NULL,
    outcome             TEXT NOT NULL CHECK (outcome IN ('ok', 'failed', 'locked'))
);
CREATE INDEX dashboard_login_attempts_user ON dashboard_login_attempts (user_key, at_ms);
CREATE INDEX dashboard_login_attempts_address ON dashboard_login_attempts (address, at_ms);
CREATE INDEX dashboard_login_attempts_time ON dashboard_login_attempts (at_ms);
