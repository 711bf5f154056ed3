-- 008_partitions.sql - state that knows its input partition, so several
-- instances of one consumer group can share an input topic and a partition's
-- rows can move from one instance to another.
--
-- part        on every per-partition state table and on the changelog: the
--             input partition whose events made the row (0 for offline input:
--             `tally ingest` reads a file as one partition). The daemon sends
--             a changelog row of part p to partition p of the changelog topic
--             (which has the input's partition count), drops a revoked
--             partition's rows with "DELETE ... WHERE part = p", and rebuilds a
--             newly assigned one from a snapshot's rows of that part plus
--             changelog partition p. An input keyed by what the state is keyed
--             by (orders: storeId; telemetry: the VIN; enrich: orderId) keeps
--             each state row in one partition. Rows written before this
--             migration are in partition 0; an update moves a row to the
--             partition of the event that made it.
-- partitions  the input partitions this database holds right now, one row
--             each, written by the daemon when it takes a partition over:
--               since_ms     when it took it (wall clock, epoch ms)
--               source       where its rows came from: "local" (this database
--                            held it and caught up on the changelog), "snapshot"
--                            (a snapshot's rows of the partition, then the
--                            changelog), "changelog" (changelog partition
--                            replayed from its start), "new" (nothing to load)
--               recovery_ms  how long bringing it up to date took
--               records      changelog records replayed for it
--             A start reads it to know which partitions' changelog to catch up
--             on, then empties it: only what the daemon is assigned is listed.
--             Rows of partitions not listed here can remain for a while after
--             a start (until the assignment has been stable for 15 s).
ALTER TABLE changelog ADD COLUMN part INTEGER;
ALTER TABLE order_window_state ADD COLUMN part INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vehicle_sensor_state ADD COLUMN part INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vehicle_pending ADD COLUMN part INTEGER NOT NULL DEFAULT 0;
ALTER TABLE enrich_seen ADD COLUMN part INTEGER NOT NULL DEFAULT 0;

CREATE TABLE partitions (
    part        INTEGER PRIMARY KEY,
    since_ms    INTEGER NOT NULL,
    source      TEXT NOT NULL,
    recovery_ms INTEGER NOT NULL,
    records     INTEGER NOT NULL
) STRICT;

DROP TRIGGER order_window_state_insert;
DROP TRIGGER order_window_state_update;
DROP TRIGGER enrich_seen_insert;
DROP TRIGGER enrich_seen_update;

CREATE TRIGGER order_window_state_insert AFTER INSERT ON order_window_state
BEGIN
    INSERT INTO changelog (entity, key, key_seq, image, delta, changed_ms, part)
    VALUES ('order_window',
            NEW.store_id || '#' || NEW.product_id || '#' || NEW.window_start_ms,
            NEW.key_seq,
            json_object('store_id', NEW.store_id, 'product_id', NEW.product_id,
                        'window_start_ms', NEW.window_start_ms,
                        'sum_micros', NEW.sum_micros, 'count', NEW.count),
            NULL,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), NEW.part);
END;

CREATE TRIGGER order_window_state_update AFTER UPDATE ON order_window_state
BEGIN
    INSERT INTO changelog (entity, key, key_seq, image, delta, changed_ms, part)
    VALUES ('order_window',
            NEW.store_id || '#' || NEW.product_id || '#' || NEW.window_start_ms,
            NEW.key_seq,
            json_object('store_id', NEW.store_id, 'product_id', NEW.product_id,
                        'window_start_ms', NEW.window_start_ms,
                        'sum_micros', NEW.sum_micros, 'count', NEW.count),
            json_object('sum_micros', NEW.sum_micros - OLD.sum_micros,
                        'count', NEW.count - OLD.count),
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), NEW.part);
END;

CREATE TRIGGER enrich_seen_insert AFTER INSERT ON enrich_seen
BEGIN
    INSERT INTO changelog (entity, key, key_seq, image, delta, changed_ms, part)
    VALUES ('enrich_order', NEW.order_id, NEW.key_seq,
            json_object('order_id', NEW.order_id, 'store_id', NEW.store_id,
                        'event_ms', NEW.event_ms, 'first_seen_ms', NEW.first_seen_ms,
                        'record', json(NEW.record)),
            NULL,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), NEW.part);
END;

CREATE TRIGGER enrich_seen_update AFTER UPDATE ON enrich_seen
BEGIN
    INSERT INTO changelog (entity, key, key_seq, image, delta, changed_ms, part)
    VALUES ('enrich_order', NEW.order_id, NEW.key_seq,
            json_object('order_id', NEW.order_id, 'store_id', NEW.store_id,
                        'event_ms', NEW.event_ms, 'first_seen_ms', NEW.first_seen_ms,
                        'record', json(NEW.record)),
            NULL,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), NEW.part);
END;

-- Dropping a partition deletes by part (vehicle_pending is small and churns:
-- a scan is cheaper than keeping an index).
CREATE INDEX order_window_state_by_part ON order_window_state (part);
CREATE INDEX vehicle_sensor_state_by_part ON vehicle_sensor_state (part);
CREATE INDEX enrich_seen_by_part ON enrich_seen (part);

-- Event counters are kept per input partition too
-- ("pipeline.<name>.p<N>.events_<x>"; the totals are their sum): what a
-- database counted before this migration is partition 0's.
INSERT INTO meta (key, value)
SELECT substr(key, 1, instr(key, '.events_')) || 'p0' || substr(key, instr(key, '.events_')), value
FROM meta
WHERE key GLOB 'pipeline.*.events_*' AND key NOT GLOB 'pipeline.*.p[0-9]*.events_*';

-- An update that moves a row to another partition means the input is not
-- keyed by the state's key (a window of one store fed from two partitions):
-- harmless while one instance holds both, wrong once they are split. The
-- daemon reports the count (meta "state.rows_moved"); replay runs without
-- triggers and does not count.
CREATE TRIGGER order_window_state_moved AFTER UPDATE OF part ON order_window_state
WHEN OLD.part <> NEW.part
BEGIN
    INSERT INTO meta (key, value) VALUES ('state.rows_moved', 1)
    ON CONFLICT (key) DO UPDATE SET value = value + 1;
END;

CREATE TRIGGER vehicle_sensor_state_moved AFTER UPDATE OF part ON vehicle_sensor_state
WHEN OLD.part <> NEW.part
BEGIN
    INSERT INTO meta (key, value) VALUES ('state.rows_moved', 1)
    ON CONFLICT (key) DO UPDATE SET value = value + 1;
END;

CREATE TRIGGER enrich_seen_moved AFTER UPDATE OF part ON enrich_seen
WHEN OLD.part <> NEW.part
BEGIN
    INSERT INTO meta (key, value) VALUES ('state.rows_moved', 1)
    ON CONFLICT (key) DO UPDATE SET value = value + 1;
END;
