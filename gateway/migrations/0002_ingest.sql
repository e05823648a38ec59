-- Ingest (gateway/ingest.py, gateway/timing.py): the evidence that places a boot's records in time
-- and the state of each reader's clock health.

-- reader_boots.anchor_* hold what the boot's records are placed with: the reader's own synced
-- clock ('reader_synced', anchor_error_ms 0 from a record, 1000 from a heartbeat) or, until there
-- is one, the receive bound ('gateway_receive'). bound_* always hold the receive bound: no message
-- of this boot made at bound_ticks_ms was received after bound_unix_ms (docs/gateway.md).
ALTER TABLE reader_boots ADD COLUMN anchor_error_ms INTEGER;
ALTER TABLE reader_boots ADD COLUMN bound_ticks_ms INTEGER;
ALTER TABLE reader_boots ADD COLUMN bound_unix_ms INTEGER;

-- reader_status.clock_offset_ms is the reader's clock minus the gateway's; the baseline is its
-- first value since the reader's clock was (re)set in this boot, and clock_event_ms when the last
-- jump or drift was seen (the flag holds for a while after it).
ALTER TABLE reader_status ADD COLUMN clock_baseline_ms INTEGER;
ALTER TABLE reader_status ADD COLUMN clock_event_ms INTEGER;
