-- The outbox of each upstream target (gateway/outbox.py, docs/gateway.md "Outbox").
--
-- One row per version of an attendance event per enabled [[forward]] target, inserted by the
-- attendance rules' listener in the transaction that created, revised or voided the event, so an
-- event never exists without its outbox rows. idempotency_key ("{event_key}.{revision}") is what
-- the upstream dedups on: the same on every attempt, after a crash and a restart.
--
-- state: 'pending' until the upstream accepted it ('delivered') or refused it for good ('parked',
-- until an operator retries it); 'superseded' when a newer version of the same event replaced
-- it before it was delivered (only the newest version is sent). Settled rows are kept for audit
-- and pruned by age; parked rows are never pruned. No names or phones here: the adapters read the
-- roster at delivery time, and parked_reason / last_error are what the upstream said.
CREATE TABLE outbox (
    item_id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: logs and the CLI name it
    target          TEXT NOT NULL,          -- the [[forward]] name
    event_id        INTEGER NOT NULL REFERENCES attendance_events (event_id),
    event_key       TEXT NOT NULL,
    revision        INTEGER NOT NULL,
    change          TEXT NOT NULL CHECK (change IN ('created', 'revised', 'voided')),
    idempotency_key TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'parked', 'superseded')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    last_error      TEXT,
    parked_reason   TEXT,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL,       -- the last change of state or attempts
    delivered_ms    INTEGER,
    upstream_id     TEXT,
    UNIQUE (target, idempotency_key)
);
-- Due items per target, in the order they are sent (event, then revision); pending rows only.
CREATE INDEX outbox_due ON outbox (target, event_id, revision, next_attempt_ms)
    WHERE state = 'pending';
-- Parked items per target (the operator's list, retries, older versions to supersede).
CREATE INDEX outbox_parked ON outbox (target, event_id) WHERE state = 'parked';
-- Delivered today (the CLI) and pruning by age.
CREATE INDEX outbox_delivered ON outbox (delivered_ms) WHERE state = 'delivered';
CREATE INDEX outbox_superseded ON outbox (updated_ms) WHERE state = 'superseded';

-- Each target's state: paused by an operator (the CLI, another process, sets it; the running
-- gateway polls it) and its circuit breaker (written by the gateway, shown by the CLI).
CREATE TABLE outbox_targets (
    target              TEXT PRIMARY KEY,
    paused              INTEGER NOT NULL DEFAULT 0,
    paused_ms           INTEGER,
    breaker             TEXT NOT NULL DEFAULT 'closed'
        CHECK (breaker IN ('closed', 'open', 'half_open')),
    breaker_opened_ms   INTEGER,
    breaker_probe_ms    INTEGER,            -- while open: no attempt before this
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,               -- the last whole-target failure
    last_failure_ms     INTEGER,
    last_success_ms     INTEGER,
    updated_ms          INTEGER NOT NULL
);
