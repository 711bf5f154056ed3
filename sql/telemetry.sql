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
-- @pipeline telemetry
-- @entity vehicle_sensor
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
    PRIMARY KEY (vin, sensor)
) STRICT, WITHOUT ROWID;

-- @stage
INSERT INTO temp.telemetry_stage (vin, sensor, value, received_at_ms, produced_at_ms)
VALUES (:vin, :sensor, json(:value), :received_at, :produced_at)
ON CONFLICT DO UPDATE SET value = excluded.value,
                          received_at_ms = excluded.received_at_ms,
                          produced_at_ms = excluded.produced_at_ms
WHERE excluded.received_at_ms > received_at_ms
   OR (excluded.received_at_ms = received_at_ms AND excluded.value IS NOT value);

-- @merge
INSERT INTO vehicle_sensor_state (vin, sensor, value, received_at_ms, produced_at_ms, key_seq)
SELECT vin, sensor, value, received_at_ms, produced_at_ms, 1
FROM temp.telemetry_stage WHERE true
ON CONFLICT DO UPDATE SET value = excluded.value,
                          received_at_ms = excluded.received_at_ms,
                          produced_at_ms = excluded.produced_at_ms,
                          key_seq = vehicle_sensor_state.key_seq + 1
WHERE excluded.received_at_ms > vehicle_sensor_state.received_at_ms
   OR (excluded.received_at_ms = vehicle_sensor_state.received_at_ms
       AND excluded.value IS NOT vehicle_sensor_state.value);
DELETE FROM temp.telemetry_stage;

-- @replay
INSERT INTO vehicle_sensor_state (vin, sensor, value, received_at_ms, produced_at_ms, key_seq)
SELECT json_extract(:image, '$.vin'), json_extract(:image, '$.sensor'),
       :image -> '$.value', json_extract(:image, '$.received_at_ms'),
       json_extract(:image, '$.produced_at_ms'), :key_seq
WHERE true
ON CONFLICT DO UPDATE SET value = excluded.value, received_at_ms = excluded.received_at_ms,
                          produced_at_ms = excluded.produced_at_ms, key_seq = excluded.key_seq
WHERE excluded.key_seq > vehicle_sensor_state.key_seq;

-- @emit
-- The full latest record of every vehicle changed since the last emit, keyed
-- by VIN, in the input's shape; produced_at is when it was emitted (the view
-- keeps the newest reading's).
SELECT vin, json_set(record, '$.produced_at', :now_ms) FROM vehicle_latest
WHERE vin IN (SELECT image ->> '$.vin' FROM changelog
              WHERE seq > :from_seq AND seq <= :to_seq AND entity = 'vehicle_sensor');
