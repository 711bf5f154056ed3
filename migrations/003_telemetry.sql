-- 003_telemetry.sql - state of the telemetry pipeline (sql/telemetry.sql).
--
-- One row per (vehicle, sensor): the value with the newest received_at wins, so
-- a late, older reading never overwrites a newer one. value is the reading's
-- JSON text exactly as it arrived (numbers keep their digits).
CREATE TABLE vehicle_sensor_state (
    vin            TEXT NOT NULL,
    sensor         TEXT NOT NULL,
    value          TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    produced_at_ms INTEGER,
    key_seq        INTEGER NOT NULL,
    PRIMARY KEY (vin, sensor)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER vehicle_sensor_state_insert AFTER INSERT ON vehicle_sensor_state
BEGIN
    INSERT INTO changelog (entity, key, key_seq, image, delta, changed_ms)
    VALUES ('vehicle_sensor', NEW.vin || '#' || NEW.sensor, NEW.key_seq,
            json_object('vin', NEW.vin, 'sensor', NEW.sensor, 'value', json(NEW.value),
                        'received_at_ms', NEW.received_at_ms,
                        'produced_at_ms', NEW.produced_at_ms),
            NULL,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

CREATE TRIGGER vehicle_sensor_state_update AFTER UPDATE ON vehicle_sensor_state
BEGIN
    INSERT INTO changelog (entity, key, key_seq, image, delta, changed_ms)
    VALUES ('vehicle_sensor', NEW.vin || '#' || NEW.sensor, NEW.key_seq,
            json_object('vin', NEW.vin, 'sensor', NEW.sensor, 'value', json(NEW.value),
                        'received_at_ms', NEW.received_at_ms,
                        'produced_at_ms', NEW.produced_at_ms),
            NULL,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

-- Stable view for users: the full latest record per vehicle, in the input's
-- shape: {"data":{"id":VIN, <sensor>: value, ...}, "received_at": ms,
-- "produced_at": ms}. Sensors appear in name order.
CREATE VIEW vehicle_latest (vin, received_at, record) AS
SELECT vin, max(received_at_ms),
       json_object('data',
                   json('{"id":' || json_quote(vin) || ','
                        || substr(json_group_object(sensor, json(value)), 2)),
                   'received_at', max(received_at_ms),
                   'produced_at', max(produced_at_ms))
FROM vehicle_sensor_state
GROUP BY vin;
