-- Attendance rules (gateway/rules.py, docs/attendance-rules.md).

-- Events are derived from every tap received so far, whatever the order taps arrive in. When a
-- late tap changes an event's facts, the row keeps its event_key and is revised in place
-- (revision + 1, updated_ms); an event that no longer holds (a 'late' or 'absent' disproved by a
-- backlog) is voided, never deleted, so what was already sent upstream can be corrected.
ALTER TABLE attendance_events ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attendance_events ADD COLUMN updated_ms INTEGER;
ALTER TABLE attendance_events ADD COLUMN voided_ms INTEGER;

-- Every scan the rules have seen, placed once: its school date, its session (NULL: not a school
-- day, a holiday, or outside every session) and whom it belongs to (NULL: an unknown card). The
-- rules recompute a student's session from these rows, so a student's several cards count as one
-- and a scan is never applied twice.
CREATE TABLE attendance_taps (
    scan_id         INTEGER PRIMARY KEY REFERENCES scans (scan_id),
    school_date     TEXT NOT NULL,
    session         TEXT,
    student_id      TEXT,
    card            TEXT NOT NULL,
    gate            TEXT NOT NULL,
    at_ms           INTEGER NOT NULL
);
CREATE INDEX attendance_taps_student ON attendance_taps (student_id, school_date, session);
CREATE INDEX attendance_taps_card ON attendance_taps (card, school_date, session);

-- Sessions whose absences were decided (close_due_sessions): each is closed once.
CREATE TABLE closed_sessions (
    school_date     TEXT NOT NULL,
    session         TEXT NOT NULL,
    closed_ms       INTEGER NOT NULL,
    absent_count    INTEGER NOT NULL,
    PRIMARY KEY (school_date, session)
);
