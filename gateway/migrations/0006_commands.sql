-- Commands to readers (SPEC.md section 7; gateway/reader_commands.py, docs/gateway.md "Commands").
--
-- The CLI (another process) only inserts 'pending' rows; the running gateway signs, sends, resends
-- and expires them, and a verified result from the reader settles them. Rows are never updated
-- back to 'pending', and a command is sent with the same bytes on every attempt (`message`,
-- fixed at the first send).

-- The last cmd_seq given to each reader. Kept apart from reader_commands so that pruning old
-- commands never lets a number be given twice; a reader keeps its row through key rotations
-- (readers rows are never deleted, revoked ids stay taken).
CREATE TABLE reader_command_seq (
    reader_id       INTEGER PRIMARY KEY REFERENCES readers (reader_id),
    last_cmd_seq    INTEGER NOT NULL CHECK (last_cmd_seq BETWEEN 1 AND 4294967295)
);

CREATE TABLE reader_commands (
    command_id      INTEGER PRIMARY KEY,
    reader_id       INTEGER NOT NULL REFERENCES readers (reader_id),
    cmd_seq         INTEGER NOT NULL CHECK (cmd_seq BETWEEN 1 AND 4294967295),
    opcode          TEXT NOT NULL
        CHECK (opcode IN ('set_time', 'set_config', 'request_heartbeat', 'reboot')),
    args            TEXT NOT NULL,          -- JSON object, SPEC field names; set_time {} = "now"
    source          TEXT NOT NULL,          -- 'cli', 'auto' (the gateway itself), ...
    issued_ms       INTEGER NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sent', 'ok', 'unknown_opcode', 'bad_args', 'stale',
                          'failed', 'expired', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    sent_ms         INTEGER,                -- first send
    last_sent_ms    INTEGER,
    transport       TEXT CHECK (transport IN ('mqtt', 'rs485')),
    key_id          INTEGER REFERENCES reader_keys (key_id),
    message         BLOB,                   -- the signed command, as sent on every attempt
    result_ms       INTEGER,
    results_seen    INTEGER NOT NULL DEFAULT 0,
    detail          TEXT,                   -- why it expired or was cancelled
    UNIQUE (reader_id, cmd_seq)
);
-- What the gateway still has to deliver or hear back about: tiny, polled every second.
CREATE INDEX reader_commands_open ON reader_commands (reader_id, cmd_seq)
    WHERE status IN ('pending', 'sent');
-- A reader's recent commands (the automatic set_time looks here on each of its heartbeats).
CREATE INDEX reader_commands_reader_time ON reader_commands (reader_id, issued_ms);
