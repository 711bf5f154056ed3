-- examples/pipelines/sensor_max.sql - the highest temperature per sensor per hour.
--
-- Events: {"sensor": "s-42", "celsius": 21.375, "ts": 1700000000000}
-- State:  sensor_max, one row per sensor and hour: the highest reading (exact,
--         in millionths of a degree) and how many readings the hour had.
-- Run:    tally run --pipeline examples/pipelines/sensor_max.sql --brokers HOST:PORT
--
-- @pipeline sensor_max
-- @input sensors.readings
-- @output sensors.hourly-max
-- @param hour_ms 3600000
-- @field sensor         sensor   id        required
-- @field celsius_micros celsius  decimal6  required
-- @field event_ms       ts       time_ms   required
-- @check
SELECT CASE
    WHEN :celsius_micros < -273150000 THEN 'celsius is below absolute zero'
    WHEN :celsius_micros > 1000000000 THEN 'celsius is above 1000'
END;
-- @state
CREATE TABLE IF NOT EXISTS sensor_max (
    sensor         TEXT    NOT NULL,
    hour_start_ms  INTEGER NOT NULL,
    max_micros     INTEGER NOT NULL,
    readings       INTEGER NOT NULL,
    PRIMARY KEY (sensor, hour_start_ms)
);
-- @fold
INSERT INTO sensor_max (sensor, hour_start_ms, max_micros, readings)
VALUES (:sensor, :event_ms - :event_ms % :hour_ms, :celsius_micros, 1)
ON CONFLICT DO UPDATE SET max_micros = max(max_micros, excluded.max_micros),
                          readings = readings + 1;
