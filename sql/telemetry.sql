-- sql/telemetry.sql - the telemetry pipeline: the latest value of every sensor
-- of every vehicle (state: vehicle_sensor_state, view: vehicle_latest).
-- Section and directive format: see sql/orders.sql and engine/pipeline.c.
--
-- Input: {"data":{"id":VIN, <sensor>: value, ...}, "received_at": ms,
--         "produced_at": ms}
-- Per (vin, sensor) the reading with the newest received_at wins; at equal
-- received_at the later arrival wins if its value differs. An empty data.id
-- skips the event (counted, logged as event=skip).
--
-- Outputs: the full latest record of each vehicle whose record changed, in the
-- input's shape, keyed by VIN (view vehicle_latest; produced_at = emit time).
-- Which vehicles are pending is kept in vehicle_pending (migrations/005), by
-- event-time window of window_ms; the daemon's strategies decide when they go
-- out (@flush, @flushed). With event-time windows (window_stream) a window
-- closes once the newest received_at seen, minus the allowed lateness, has
-- passed its end; a reading for a closed window is late (@late).
--
-- @pipeline telemetry
-- @entity vehicle_sensor
-- @param window_ms 120000
-- @field vin         data.id      id       skip_empty
-- @field received_at received_at  time_ms  required
-- @field produced_at produced_at  time_ms  optional
-- @each  sensor value data except id

-- @setup
CREATE TEMP TABLE IF NOT EXISTS telemetry_stage (
    vin            TEXT NOT NULL,
    sensor         TEXT NOT NULL,
    value          TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    produced_at_ms INTEGER,
    part           INTEGER NOT NULL,
    PRIMARY KEY (vin, sensor)
) STRICT, WITHOUT ROWID;
-- The vehicles whose state this batch changed.
CREATE TEMP TABLE IF NOT EXISTS telemetry_changed (
    vin TEXT PRIMARY KEY
) STRICT, WITHOUT ROWID;
-- With event-time windows, the newest received_at of this batch's accepted
-- events so far: lateness is judged event by event in input order, so the
-- same input gives the same late events however it is cut into batches.
CREATE TEMP TABLE IF NOT EXISTS telemetry_clock (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    max_event_ms INTEGER NOT NULL
) STRICT;

-- @late
SELECT CASE WHEN :received_at < closed_ms THEN
    printf('late: received_at %d belongs to window [%d, %d), closed since the newest ' ||
           'received_at seen (%d) minus the allowed lateness (%d ms) passed %d',
           :received_at, :received_at - :received_at % :window_ms,
           :received_at - :received_at % :window_ms + :window_ms, max_event_ms,
           :allowed_lateness_ms, closed_ms)
END
FROM (SELECT max_event_ms, (max_event_ms - :allowed_lateness_ms) / :window_ms * :window_ms AS closed_ms
      FROM (SELECT max(m) AS max_event_ms
            FROM (SELECT max_event_ms AS m FROM event_clock WHERE pipeline = 'telemetry'
                  UNION ALL SELECT max_event_ms FROM temp.telemetry_clock)));
-- (runs only for an event that is not late)
INSERT INTO temp.telemetry_clock (id, max_event_ms) VALUES (1, :received_at)
ON CONFLICT DO UPDATE SET max_event_ms = max(max_event_ms, excluded.max_event_ms);

-- @stage
-- Once per event, its readings as the rows of tly_each (engine/members.h):
-- one statement run for all 30 readings of a full record. Each row is
-- upserted in the event's order, as one run per reading would.
INSERT INTO temp.telemetry_stage (vin, sensor, value, received_at_ms, produced_at_ms, part)
SELECT :vin, key, value, :received_at, :produced_at, :partition FROM tly_each(:each) WHERE true
ON CONFLICT DO UPDATE SET value = excluded.value,
                          received_at_ms = excluded.received_at_ms,
                          produced_at_ms = excluded.produced_at_ms,
                          part = excluded.part
WHERE excluded.received_at_ms > received_at_ms
   OR (excluded.received_at_ms = received_at_ms AND excluded.value IS NOT value);

-- @merge
-- A staged reading that will win moves its row to the reading's partition
-- first, and only where the partition differs: the merge below then leaves
-- part alone, since an update that sets part (even to the same value) also
-- rewrites the row's entry in vehicle_sensor_state_by_part and runs the
-- vehicle_sensor_state_moved trigger, which cost about as much as the merge
-- itself. (Same rows moved, same trigger runs: the condition is the merge's.)
INSERT INTO vehicle_sensor_state (vin, sensor, value, received_at_ms, produced_at_ms, key_seq, part)
SELECT v.vin, v.sensor, v.value, v.received_at_ms, v.produced_at_ms, v.key_seq, s.part
FROM temp.telemetry_stage AS s
CROSS JOIN vehicle_sensor_state AS v ON v.vin = s.vin AND v.sensor = s.sensor
WHERE v.part <> s.part
  AND (s.received_at_ms > v.received_at_ms
       OR (s.received_at_ms = v.received_at_ms AND s.value IS NOT v.value))
ON CONFLICT DO UPDATE SET part = excluded.part;
INSERT INTO vehicle_sensor_state (vin, sensor, value, received_at_ms, produced_at_ms, key_seq, part)
SELECT vin, sensor, value, received_at_ms, produced_at_ms, 1, part
FROM temp.telemetry_stage WHERE true
ON CONFLICT DO UPDATE SET value = excluded.value,
                          received_at_ms = excluded.received_at_ms,
                          produced_at_ms = excluded.produced_at_ms,
                          key_seq = vehicle_sensor_state.key_seq + 1
WHERE excluded.received_at_ms > vehicle_sensor_state.received_at_ms
   OR (excluded.received_at_ms = vehicle_sensor_state.received_at_ms
       AND excluded.value IS NOT vehicle_sensor_state.value);
-- The vehicles whose staged reading won changed; a reading that lost to a
-- newer one changed nothing. Vehicle by vehicle, so that the first reading
-- found answers for the other sensors and the state is only read at the
-- staged keys (joined reading by reading, SQLite scanned the whole state).
INSERT INTO temp.telemetry_changed (vin)
SELECT d.vin FROM (SELECT DISTINCT vin FROM temp.telemetry_stage) AS d
WHERE EXISTS (SELECT 1 FROM temp.telemetry_stage AS s
              JOIN vehicle_sensor_state AS v ON v.vin = s.vin AND v.sensor = s.sensor
              WHERE s.vin = d.vin AND v.received_at_ms = s.received_at_ms
                AND v.value = s.value);
-- One changelog row per changed vehicle with its whole state (format in
-- migrations/007_telemetry_changelog.sql).
INSERT INTO changelog (entity, key, key_seq, image, delta, changed_ms, part)
SELECT 'vehicle_sensor', c.vin, sum(s.key_seq),
       json_object('vin', c.vin, 'sensors',
                   json_group_object(s.sensor, json_array(json(s.value), s.received_at_ms,
                                                          s.produced_at_ms, s.key_seq))),
       NULL, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), max(s.part)
FROM temp.telemetry_changed AS c CROSS JOIN vehicle_sensor_state AS s ON s.vin = c.vin
GROUP BY c.vin;
-- They are pending: with event-time windows (window_stream) in the window of
-- each of their readings; otherwise one row per vehicle (window 0), so that
-- a pending set nobody flushes (tally ingest) stays one row per vehicle.
INSERT INTO vehicle_pending (window_start_ms, vin, mark, part)
SELECT DISTINCT CASE WHEN :windowed THEN received_at_ms - received_at_ms % :window_ms ELSE 0 END, vin,
       coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changelog'), 0), part
FROM temp.telemetry_stage
WHERE vin IN (SELECT vin FROM temp.telemetry_changed)
ON CONFLICT DO UPDATE SET mark = excluded.mark, part = excluded.part;
INSERT INTO event_clock (pipeline, max_event_ms)
SELECT 'telemetry', max(received_at_ms) FROM temp.telemetry_stage HAVING count(*) > 0
ON CONFLICT DO UPDATE SET max_event_ms = max(max_event_ms, excluded.max_event_ms);
DELETE FROM temp.telemetry_stage;
DELETE FROM temp.telemetry_changed;
DELETE FROM temp.telemetry_clock;

-- @replay
-- A row of migrations/007's format, or an older one-sensor row (entity
-- vehicle_sensor, {"vin","sensor","value","received_at_ms","produced_at_ms"})
-- put in the same shape: each sensor is applied when its key_seq is newer.
INSERT INTO vehicle_sensor_state (vin, sensor, value, received_at_ms, produced_at_ms, key_seq, part)
SELECT json_extract(:image, '$.vin'), j.key, j.value -> 0,
       j.value ->> 1, j.value ->> 2, j.value ->> 3, :partition
FROM json_each(CASE WHEN json_type(:image, '$.sensors') IS NULL
                    THEN json_object(json_extract(:image, '$.sensor'),
                                     json_array(:image -> '$.value',
                                                json_extract(:image, '$.received_at_ms'),
                                                json_extract(:image, '$.produced_at_ms'),
                                                :key_seq))
                    ELSE :image -> '$.sensors' END) AS j
WHERE true
ON CONFLICT DO UPDATE SET value = excluded.value, received_at_ms = excluded.received_at_ms,
                          produced_at_ms = excluded.produced_at_ms, key_seq = excluded.key_seq,
                          part = excluded.part
WHERE excluded.key_seq > vehicle_sensor_state.key_seq;
-- A vehicle the replay changed is pending again (the daemon forgets, after
-- recovery, what the committed history already emitted), in the window of its
-- newest reading; the clock moves as it did.
INSERT INTO vehicle_pending (window_start_ms, vin, mark, part)
SELECT max(received_at_ms) - max(received_at_ms) % :window_ms, vin,
       coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changelog'), 0), :partition
FROM vehicle_sensor_state
WHERE vin = json_extract(:image, '$.vin') AND changes() > 0
GROUP BY vin
ON CONFLICT DO UPDATE SET mark = excluded.mark, part = excluded.part;
INSERT INTO event_clock (pipeline, max_event_ms)
SELECT 'telemetry', max(received_at_ms) FROM vehicle_sensor_state
WHERE vin = json_extract(:image, '$.vin') HAVING count(*) > 0
ON CONFLICT DO UPDATE SET max_event_ms = max(max_event_ms, excluded.max_event_ms);

-- @flush
-- The full latest record of every pending vehicle, keyed by VIN, in the shape
-- of the view vehicle_latest (spelled out again so that only the pending
-- vehicles' rows are read, one primary-key range each); produced_at is when it
-- was emitted. A pending vehicle always has state rows: only a state change
-- marks one.
SELECT p.vin,
       (SELECT json_object('data',
                           json('{"id":' || json_quote(p.vin) || ','
                                || substr(json_group_object(s.sensor, json(s.value)), 2)),
                           'received_at', max(s.received_at_ms),
                           'produced_at', :now_ms)
        FROM vehicle_sensor_state AS s WHERE s.vin = p.vin)
FROM (SELECT DISTINCT vin FROM vehicle_pending
      WHERE mark <= :flush_seq
        AND (:closed_only = 0 OR window_start_ms + :window_ms <=
             (SELECT (max_event_ms - :allowed_lateness_ms) / :window_ms * :window_ms
              FROM event_clock WHERE pipeline = 'telemetry'))) AS p;

-- @flushed
DELETE FROM vehicle_pending
WHERE mark <= :flush_seq
  AND (:closed_only = 0 OR window_start_ms + :window_ms <=
       (SELECT (max_event_ms - :allowed_lateness_ms) / :window_ms * :window_ms
        FROM event_clock WHERE pipeline = 'telemetry'));
