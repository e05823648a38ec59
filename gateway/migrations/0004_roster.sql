-- Roster imports (gateway/roster.py): an audit of every import run, and the OneRoster
-- dateLastModified last applied to each student so an older file cannot undo a newer one.
-- No names, phones or card numbers here: the audit keeps counts and where each error was.

CREATE TABLE roster_imports (
    import_id       INTEGER PRIMARY KEY,
    started_ms      INTEGER NOT NULL,
    finished_ms     INTEGER NOT NULL,
    format          TEXT NOT NULL CHECK (format IN ('oneroster', 'sheet')),
    source          TEXT NOT NULL,          -- the file or folder name as given to the import
    counts          TEXT NOT NULL,          -- JSON: {"students": {"added": 3, ...}, ...}
    error_count     INTEGER NOT NULL
);
CREATE INDEX roster_imports_time ON roster_imports (started_ms);

CREATE TABLE roster_import_errors (
    import_id       INTEGER NOT NULL REFERENCES roster_imports (import_id),
    file            TEXT NOT NULL,
    line            INTEGER NOT NULL,       -- 1-based line (CSV) or row (XLSX); 0: the whole file
    code            TEXT NOT NULL,          -- e.g. 'bad_student_id', 'card_taken' (docs/roster.md)
    effect          TEXT NOT NULL CHECK (effect IN ('row', 'card', 'guardian'))
);
CREATE INDEX roster_import_errors_import ON roster_import_errors (import_id);

CREATE TABLE roster_versions (
    student_id      TEXT PRIMARY KEY REFERENCES students (student_id),
    modified_ms     INTEGER NOT NULL,       -- OneRoster dateLastModified, Unix ms UTC
    source          TEXT NOT NULL
);
