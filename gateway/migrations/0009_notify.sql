-- Parent notifications (gateway/notify.py, docs/notifications.md).
--
-- guardians already holds consent, consent_ms and consent_source (0001). Added here: each
-- guardian's language, per-kind opt-outs, a history of every consent change (kept for audit,
-- no names or phones), the messages (rendered once, stored with their delivery state), the
-- channels' pause flag and breaker, and the audit of every decision: why each message was or
-- was not sent.

ALTER TABLE guardians ADD COLUMN locale TEXT NOT NULL DEFAULT 'vi' CHECK (locale IN ('vi', 'en'));

-- A guardian who consented may still turn off single kinds ("no check-out messages").
CREATE TABLE guardian_opt_outs (
    guardian_id     INTEGER NOT NULL REFERENCES guardians (guardian_id) ON DELETE CASCADE,
    kind            TEXT NOT NULL
        CHECK (kind IN ('check_in', 'check_out', 'late', 'absent', 'unknown_card')),
    set_ms          INTEGER NOT NULL,
    source          TEXT NOT NULL,
    PRIMARY KEY (guardian_id, kind)
);

-- Every consent given or withdrawn, whoever changed it (the roster import in another process,
-- `attendance-gateway notify consent`): written by triggers, so no path can skip it. Outlives the
-- guardian row (a purge keeps it: ids, times and sources are not personal data).
CREATE TABLE guardian_consent_log (
    log_id          INTEGER PRIMARY KEY AUTOINCREMENT,
    guardian_id     INTEGER NOT NULL,
    student_id      TEXT NOT NULL,
    consent         INTEGER NOT NULL,
    at_ms           INTEGER,
    source          TEXT
);
CREATE INDEX guardian_consent_log_guardian ON guardian_consent_log (guardian_id);

CREATE TRIGGER guardians_consent_insert AFTER INSERT ON guardians
WHEN NEW.consent_ms IS NOT NULL BEGIN
    INSERT INTO guardian_consent_log (guardian_id, student_id, consent, at_ms, source)
    VALUES (NEW.guardian_id, NEW.student_id, NEW.consent, NEW.consent_ms, NEW.consent_source);
END;
CREATE TRIGGER guardians_consent_update AFTER UPDATE OF consent ON guardians
WHEN NEW.consent IS NOT OLD.consent BEGIN
    INSERT INTO guardian_consent_log (guardian_id, student_id, consent, at_ms, source)
    VALUES (NEW.guardian_id, NEW.student_id, NEW.consent, NEW.consent_ms, NEW.consent_source);
END;

-- One message per (event, recipient): message_id is stable (a hash of the event key and the
-- recipient, never of the revision), so a revision never makes a second message and a retry or
-- a restart sends the same id. text and template_data are rendered once when the message is
-- decided; a purge replaces them with a redaction marker. No phone here: it is read from
-- guardians when the message goes (a removed guardian or a withdrawn consent cancels it).
CREATE TABLE notify_messages (
    item_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT NOT NULL UNIQUE,
    channel         TEXT NOT NULL,          -- the [[notify.channel]] name
    event_id        INTEGER NOT NULL REFERENCES attendance_events (event_id),
    event_key       TEXT NOT NULL,
    guardian_id     INTEGER,                -- NULL: the staff recipient; no FK (kept for audit)
    student_id      TEXT,
    school_date     TEXT NOT NULL,
    kind            TEXT NOT NULL
        CHECK (kind IN ('check_in', 'check_out', 'late', 'absent', 'unknown_card')),
    locale          TEXT NOT NULL CHECK (locale IN ('vi', 'en')),
    text            TEXT NOT NULL,
    template_id     TEXT,
    template_data   TEXT NOT NULL DEFAULT '{}',   -- JSON object of strings
    event           TEXT NOT NULL DEFAULT '{}',   -- JSON: the event's facts (no names)
    state           TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'parked', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,       -- the end of quiet hours for a held message
    last_error      TEXT,
    parked_reason   TEXT,                   -- also why a message was cancelled
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL,
    delivered_ms    INTEGER,
    upstream_id     TEXT,
    redacted_ms     INTEGER
);
CREATE INDEX notify_messages_due ON notify_messages (channel, next_attempt_ms)
    WHERE state = 'pending';
CREATE INDEX notify_messages_parked ON notify_messages (channel) WHERE state = 'parked';
CREATE INDEX notify_messages_guardian ON notify_messages (guardian_id, school_date);
CREATE INDEX notify_messages_student ON notify_messages (student_id);
CREATE INDEX notify_messages_event ON notify_messages (event_id);
CREATE INDEX notify_messages_delivered ON notify_messages (delivered_ms)
    WHERE state = 'delivered';

-- A guardian removed (roster import, purge) or a consent withdrawn: what was not sent yet is not.
CREATE TRIGGER guardians_delete_notify AFTER DELETE ON guardians BEGIN
    UPDATE notify_messages SET state = 'cancelled', parked_reason = 'guardian removed'
    WHERE guardian_id = OLD.guardian_id AND state IN ('pending', 'parked');
END;
CREATE TRIGGER guardians_withdraw_notify AFTER UPDATE OF consent ON guardians
WHEN NEW.consent = 0 AND OLD.consent <> 0 BEGIN
    UPDATE notify_messages SET state = 'cancelled', parked_reason = 'consent withdrawn'
    WHERE guardian_id = NEW.guardian_id AND state IN ('pending', 'parked');
END;

-- Each channel's pause flag and circuit breaker: the shape of outbox_targets (gateway/outbox.py
-- serves both queues with one delivery loop).
CREATE TABLE notify_channels (
    target              TEXT PRIMARY KEY,   -- the channel's name
    paused              INTEGER NOT NULL DEFAULT 0,
    paused_ms           INTEGER,
    breaker             TEXT NOT NULL DEFAULT 'closed'
        CHECK (breaker IN ('closed', 'open', 'half_open')),
    breaker_opened_ms   INTEGER,
    breaker_probe_ms    INTEGER,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    last_failure_ms     INTEGER,
    last_success_ms     INTEGER,
    updated_ms          INTEGER NOT NULL
);

-- The audit: one row per (event change, recipient) the notifier looked at, whatever it decided.
-- outcome: 'queued' (a message was made), 'held' (made, held until quiet hours end), 'skipped'
-- (no message) or 'cancelled' (a queued message withdrawn: the event was voided). reason is a
-- code (docs/notifications.md): sent, quiet_hours, no_consent, opted_out, kind_off, daily_cap,
-- duplicate, revision, covered_by_late, no_guardian, no_phone, too_old, ... No names or phones.
CREATE TABLE notify_decisions (
    decision_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    decided_ms      INTEGER NOT NULL,
    event_id        INTEGER NOT NULL,
    event_key       TEXT NOT NULL,
    revision        INTEGER NOT NULL,
    change          TEXT NOT NULL,
    kind            TEXT NOT NULL,
    student_id      TEXT,
    school_date     TEXT NOT NULL,
    guardian_id     INTEGER,
    outcome         TEXT NOT NULL CHECK (outcome IN ('queued', 'held', 'skipped', 'cancelled')),
    reason          TEXT NOT NULL,
    item_id         INTEGER                 -- the message, when there is one
);
CREATE INDEX notify_decisions_event ON notify_decisions (event_id);
CREATE INDEX notify_decisions_student ON notify_decisions (student_id, school_date);
CREATE INDEX notify_decisions_guardian ON notify_decisions (guardian_id);
