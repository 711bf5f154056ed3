-- 005_telemetry_pending.sql - what the telemetry pipeline still has to emit,
-- and its event-time clock (sql/telemetry.sql @merge, @late, @flush).
--
-- vehicle_pending  one row per (window, vehicle) whose latest record changed
--                  and has not been emitted yet. window_start_ms is the start of
--                  the event-time window (received_at, window_ms of the
--                  pipeline) of the reading that changed it; mark is the
--                  changelog seq when it was last marked, so an emit that read
--                  the table up to seq S forgets only rows with mark <= S and a
--                  vehicle changed again meanwhile stays pending. Every emit
--                  strategy of the daemon reads it (inline: within the batch;
--                  log_compacted: every flush; window_stream: when a window
--                  closes; state_store: `tally publish`, another process).
--                  Replaying the changelog marks the replayed vehicles again,
--                  so a rebuilt database re-emits them rather than missing one.
-- event_clock      per pipeline, the newest event time applied; event-time
--                  windows close behind it (window_stream). Replay advances it
--                  too, so it is the same after a rebuild.
CREATE TABLE vehicle_pending (
    window_start_ms INTEGER NOT NULL,
    vin             TEXT NOT NULL,
    mark            INTEGER NOT NULL,
    PRIMARY KEY (window_start_ms, vin)
) STRICT, WITHOUT ROWID;

CREATE TABLE event_clock (
    pipeline     TEXT PRIMARY KEY,
    max_event_ms INTEGER NOT NULL
) STRICT;

-- A database that ran log_compacted before this table existed recorded the
-- changelog seq up to which it had flushed; what changed after it is pending.
INSERT INTO vehicle_pending (window_start_ms, vin, mark)
SELECT 0, image ->> '$.vin', max(seq) FROM changelog
WHERE entity = 'vehicle_sensor'
  AND seq > (SELECT value FROM meta WHERE key = 'emit.flushed_seq')
GROUP BY 2;
DELETE FROM meta WHERE key = 'emit.flushed_seq';

INSERT INTO event_clock (pipeline, max_event_ms)
SELECT 'telemetry', max(received_at_ms) FROM vehicle_sensor_state HAVING count(*) > 0;
