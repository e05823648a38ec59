-- The gateway's schema, version 1. One database holds raw scans, quarantine, readers and their
-- keys, the roster, attendance events and (in later migrations) the outboxes. Times are Unix
-- milliseconds (INTEGER) unless named *_date (local school date, YYYY-MM-DD). Written in the
-- common subset of SQLite and PostgreSQL types and constraints.

CREATE TABLE readers (
    reader_id       INTEGER PRIMARY KEY CHECK (reader_id BETWEEN 1 AND 4294967294),
    name            TEXT NOT NULL UNIQUE,
    gate            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    bus_port        TEXT,
    bus_address     INTEGER CHECK (bus_address BETWEEN 1 AND 247),
    created_ms      INTEGER NOT NULL,
    UNIQUE (bus_port, bus_address)
);

-- Key material is stored encrypted under the gateway's master key (gateway/keystore.py); a
-- retired key still verifies records made before a rotation, a revoked one never does.
CREATE TABLE reader_keys (
    key_id          INTEGER PRIMARY KEY,
    reader_id       INTEGER NOT NULL REFERENCES readers (reader_id),
    sealed_key      BLOB NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('active', 'retired', 'revoked')),
    created_ms      INTEGER NOT NULL,
    retired_ms      INTEGER,
    revoked_ms      INTEGER
);
CREATE INDEX reader_keys_reader ON reader_keys (reader_id, state);

-- What the gateway knows of each boot of each reader: where its ticks sit in wall time, learned
-- from synced records and heartbeats, so unsynced records can be placed (invariant 5).
CREATE TABLE reader_boots (
    reader_id       INTEGER NOT NULL REFERENCES readers (reader_id),
    boot            INTEGER NOT NULL,
    first_seen_ms   INTEGER NOT NULL,
    anchor_ticks_ms INTEGER,
    anchor_unix_ms  INTEGER,
    anchor_source   TEXT CHECK (anchor_source IN ('reader_synced', 'gateway_receive')),
    max_seq         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (reader_id, boot)
);

-- The latest heartbeat of each reader, and the gateway's view of its clock.
CREATE TABLE reader_status (
    reader_id           INTEGER PRIMARY KEY REFERENCES readers (reader_id),
    received_ms         INTEGER NOT NULL,
    boot                INTEGER NOT NULL,
    state               TEXT NOT NULL,
    faults              TEXT NOT NULL,
    fw_version          TEXT NOT NULL,
    link                TEXT NOT NULL,
    rssi_dbm            INTEGER NOT NULL,
    clock_synced        INTEGER NOT NULL,
    reader_time_s       INTEGER NOT NULL,
    uptime_s            INTEGER NOT NULL,
    free_heap           INTEGER NOT NULL,
    queue_depth         INTEGER NOT NULL,
    oldest_unsent_age_s INTEGER NOT NULL,
    dropped             INTEGER NOT NULL,
    last_ack_boot       INTEGER NOT NULL,
    last_ack_seq        INTEGER NOT NULL,
    clock_offset_ms     INTEGER,
    clock_health        TEXT NOT NULL DEFAULT 'unknown'
        CHECK (clock_health IN ('unknown', 'ok', 'unsynced', 'drifting', 'jumped'))
);

-- Every verified scan record, once per identity, with its bytes for audit.
CREATE TABLE scans (
    scan_id         INTEGER PRIMARY KEY,
    reader_id       INTEGER NOT NULL REFERENCES readers (reader_id),
    boot            INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    card            TEXT NOT NULL,          -- canonical card id: '<tech>:<UID hex>'
    reader_time_ms  INTEGER NOT NULL,
    clock_synced    INTEGER NOT NULL,
    ticks_ms        INTEGER NOT NULL,
    received_ms     INTEGER NOT NULL,
    at_ms           INTEGER NOT NULL,       -- the authoritative time
    time_source     TEXT NOT NULL CHECK (time_source IN ('reader', 'corrected', 'gateway')),
    key_id          INTEGER NOT NULL REFERENCES reader_keys (key_id),
    raw             BLOB NOT NULL,
    UNIQUE (reader_id, boot, seq)
);
CREATE INDEX scans_card_time ON scans (card, at_ms);
CREATE INDEX scans_time ON scans (at_ms);

-- Sequence gaps inside a boot, as seen now (records may still fill them: live taps travel ahead
-- of a backlog). Drops the reader itself made are counted in reader_status.dropped.
CREATE VIEW seq_gaps AS
SELECT reader_id, boot, prev_seq + 1 AS first_missing, seq - 1 AS last_missing
FROM (
    SELECT reader_id, boot, seq,
           LAG(seq) OVER (PARTITION BY reader_id, boot ORDER BY seq) AS prev_seq
    FROM scans
) AS ordered
WHERE prev_seq IS NOT NULL AND seq > prev_seq + 1;

-- Everything that failed verification: kept for audit, never forwarded.
CREATE TABLE quarantine (
    quarantine_id   INTEGER PRIMARY KEY,
    first_ms        INTEGER NOT NULL,
    last_ms         INTEGER NOT NULL,
    times_seen      INTEGER NOT NULL DEFAULT 1,
    transport       TEXT NOT NULL,          -- e.g. 'mqtt att/v1/s/17/up/batch', 'rs485 /dev/ttyUSB0 #3'
    reader_id       INTEGER,                -- as claimed: may be unknown
    boot            INTEGER,
    seq             INTEGER,
    reason          TEXT NOT NULL,
    detail          TEXT NOT NULL,
    raw             BLOB NOT NULL,
    raw_sha256      BLOB NOT NULL,
    UNIQUE (raw_sha256, reason)
);
CREATE INDEX quarantine_time ON quarantine (last_ms);

-- Roster. student_id is the 10-digit Ministry student ID (never the citizen ID).
CREATE TABLE classes (
    class_id        TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    grade           TEXT,
    source          TEXT NOT NULL
);

CREATE TABLE students (
    student_id      TEXT PRIMARY KEY,
    full_name       TEXT NOT NULL,
    class_id        TEXT REFERENCES classes (class_id),
    active          INTEGER NOT NULL DEFAULT 1,
    source          TEXT NOT NULL,
    updated_ms      INTEGER NOT NULL
);
CREATE INDEX students_class ON students (class_id);

-- Card numbers as a roster gives them, normalised (upper case, no separators); a tap matches when
-- any printed form of its canonical id equals one of them (protocol/cardforms.py).
CREATE TABLE card_numbers (
    number          TEXT PRIMARY KEY,
    student_id      TEXT NOT NULL REFERENCES students (student_id),
    source          TEXT NOT NULL,
    assigned_ms     INTEGER NOT NULL
);
CREATE INDEX card_numbers_student ON card_numbers (student_id);

CREATE TABLE guardians (
    guardian_id     INTEGER PRIMARY KEY,
    student_id      TEXT NOT NULL REFERENCES students (student_id),
    name            TEXT NOT NULL,
    phone           TEXT,
    relation        TEXT,
    consent         INTEGER NOT NULL DEFAULT 0,
    consent_ms      INTEGER,
    consent_source  TEXT,
    UNIQUE (student_id, phone)
);

-- Attendance events derived from scans by the rules (gateway/rules.py). event_key is the stable
-- idempotency key forwarders and notifiers send upstream.
CREATE TABLE attendance_events (
    event_id        INTEGER PRIMARY KEY,
    event_key       TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL
        CHECK (kind IN ('check_in', 'check_out', 'late', 'absent', 'unknown_card')),
    student_id      TEXT REFERENCES students (student_id),
    card            TEXT,
    school_date     TEXT NOT NULL,
    session         TEXT NOT NULL,
    at_ms           INTEGER NOT NULL,
    gate            TEXT,
    scan_id         INTEGER REFERENCES scans (scan_id),
    created_ms      INTEGER NOT NULL
);
CREATE INDEX attendance_day ON attendance_events (school_date, session, kind);
CREATE INDEX attendance_student ON attendance_events (student_id, school_date);

-- Cards seen at the gate that the roster does not know.
CREATE TABLE unknown_cards (
    card            TEXT PRIMARY KEY,
    first_ms        INTEGER NOT NULL,
    last_ms         INTEGER NOT NULL,
    times_seen      INTEGER NOT NULL DEFAULT 1,
    last_reader_id  INTEGER REFERENCES readers (reader_id),
    acknowledged    INTEGER NOT NULL DEFAULT 0
);
