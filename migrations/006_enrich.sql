-- 006_enrich.sql - state of the enrich pipeline (sql/enrich.sql): the orders
-- seen within the dedup window.
--
-- One row per orderId first seen less than --dedup-window ago. Older rows are
-- pruned a few thousand per batch, and an expired row that is still there
-- counts as absent, so pruning only bounds the table and never changes which
-- order is a duplicate. Deleting a row writes no changelog row: a pruned row
-- that a recovery brings back is expired, and pruned again.
--
--   order_id       the dedup key (orderId as text)
--   store_id       the output key (storeId as text)
--   event_ms       the normalized event time (normTs)
--   first_seen_ms  wall-clock time of the batch that first committed it
--   record         the order as emitted to the output topic: the input
--                  object as received with normTs and validated set
--   key_seq        the version of the row for changelog replay. It is the
--                  first-seen time, not a counter, because a key comes back
--                  after its row was pruned: a counter would restart at 1 and
--                  replay would take the older image over the newer one.
--                  First-seen times of one orderId are at least the window
--                  apart, so they only grow (a clock set back by less than
--                  the window cannot reorder them; more is caught by
--                  key_seq = max(now, previous + 1) while the row exists).
CREATE TABLE enrich_seen (
    order_id      TEXT NOT NULL PRIMARY KEY,
    store_id      TEXT NOT NULL,
    event_ms      INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    record        TEXT NOT NULL,
    key_seq       INTEGER NOT NULL
) STRICT;

-- Pruning takes the oldest first.
CREATE INDEX enrich_seen_by_first_seen ON enrich_seen (first_seen_ms);

CREATE TRIGGER enrich_seen_insert AFTER INSERT ON enrich_seen
BEGIN
    INSERT INTO changelog (entity, key, key_seq, image, delta, changed_ms)
    VALUES ('enrich_order', NEW.order_id, NEW.key_seq,
            json_object('order_id', NEW.order_id, 'store_id', NEW.store_id,
                        'event_ms', NEW.event_ms, 'first_seen_ms', NEW.first_seen_ms,
                        'record', json(NEW.record)),
            NULL,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

-- An update is an orderId seen again after its window: a new first sighting.
CREATE TRIGGER enrich_seen_update AFTER UPDATE ON enrich_seen
BEGIN
    INSERT INTO changelog (entity, key, key_seq, image, delta, changed_ms)
    VALUES ('enrich_order', NEW.order_id, NEW.key_seq,
            json_object('order_id', NEW.order_id, 'store_id', NEW.store_id,
                        'event_ms', NEW.event_ms, 'first_seen_ms', NEW.first_seen_ms,
                        'record', json(NEW.record)),
            NULL,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

-- Stable view for users.
CREATE VIEW enriched_orders (order_id, store_id, norm_ts, first_seen, record) AS
SELECT order_id, store_id, event_ms, first_seen_ms, record FROM enrich_seen;
