-- sql/enrich.sql - the enrich pipeline (OpA): raw orders validated, their
-- event time normalized, and each orderId passed on once within the dedup
-- window (state: enrich_seen, view: enriched_orders).
-- Section and directive format: see sql/orders.sql and engine/pipeline.c.
--
-- Input (topic orders): {"orderId", "productId", "storeId", "price", "qty",
-- "ts"}, any other members are passed through. ts is epoch ms, epoch seconds
-- (below 1e11) or RFC 3339 (engine/timestamp.h).
-- Output (topic orders.enriched), keyed by storeId, the key the aggregator
-- (sql/orders.sql) partitions its windows by: the input object as received,
-- with "normTs" (epoch ms) and "validated": true set - the shape
-- `tally run --pipeline orders` reads.
--
-- Invalid orders go to the dead-letter topic with the reason: a missing
-- field, a wrong type, a ts that is no time, a price below 0 or a qty below
-- 1. The aggregator's own bounds (price <= 1e9, qty <= 1000) are checked here
-- too, so that no order this stage calls validated is dead-lettered later.
--
-- Duplicates: the first copy of an orderId (in input order) is emitted; a
-- later one is dropped silently while the first was seen less than
-- dedup_window_ms ago (wall clock, as tally committed it). A copy arriving
-- after that counts as a new order and is emitted again.
--
-- @pipeline enrich
-- @entity enrich_order
-- @param dedup_window_ms 86400000 per_run
-- @field order_id     orderId    id        required
-- @field store_id     storeId    id        required
-- @field product_id   productId  id        required
-- @field price_micros price      decimal6  required
-- @field qty          qty        int       required
-- @field event_ms     ts         time_any  required

-- @setup
-- Arrival order is kept (rowid) so that outputs leave in input order.
CREATE TEMP TABLE IF NOT EXISTS enrich_stage (
    order_id TEXT NOT NULL UNIQUE,
    store_id TEXT NOT NULL,
    event_ms INTEGER NOT NULL,
    record   TEXT NOT NULL,
    part     INTEGER NOT NULL
) STRICT;

-- @check
SELECT CASE
    WHEN :price_micros < 0 THEN 'price must be >= 0'
    WHEN :price_micros > 1000000000000000 THEN 'price must be <= 1000000000'
    WHEN :qty < 1 THEN 'qty must be > 0'
    WHEN :qty > 1000 THEN 'qty must be at most 1000'
END;

-- @stage
-- A duplicate within the batch: the first copy stays.
INSERT INTO temp.enrich_stage (order_id, store_id, event_ms, record, part)
VALUES (:order_id, :store_id, :event_ms,
        json_set(:event, '$.normTs', :event_ms, '$.validated', json('true')), :partition)
ON CONFLICT DO NOTHING;

-- @merge
-- Expired rows go, oldest first, more per batch than a batch can add.
DELETE FROM enrich_seen WHERE rowid IN (
    SELECT rowid FROM enrich_seen
    WHERE first_seen_ms <= CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - :dedup_window_ms
    ORDER BY first_seen_ms
    LIMIT 1000 + 2 * (SELECT count(*) FROM temp.enrich_stage));
-- New orderIds are inserted; one whose row expired (and is not pruned yet)
-- is seen anew; one seen within the window changes nothing, so it writes no
-- changelog row and is not emitted.
INSERT INTO enrich_seen (order_id, store_id, event_ms, first_seen_ms, record, key_seq, part)
SELECT s.order_id, s.store_id, s.event_ms, now.ms, s.record, now.ms, s.part
FROM temp.enrich_stage AS s,
     (SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) AS ms) AS now
WHERE true
ORDER BY s.rowid
ON CONFLICT (order_id) DO UPDATE SET store_id = excluded.store_id, event_ms = excluded.event_ms,
                                     first_seen_ms = excluded.first_seen_ms,
                                     record = excluded.record,
                                     key_seq = max(excluded.key_seq, enrich_seen.key_seq + 1),
                                     part = excluded.part
WHERE enrich_seen.first_seen_ms <= excluded.first_seen_ms - :dedup_window_ms;
DELETE FROM temp.enrich_stage;

-- @replay
-- VALUES: a one-row INSERT runs without a statement journal (see orders.sql).
INSERT INTO enrich_seen (order_id, store_id, event_ms, first_seen_ms, record, key_seq, part)
VALUES (:image ->> '$.order_id', :image ->> '$.store_id', :image ->> '$.event_ms',
        :image ->> '$.first_seen_ms', :image -> '$.record', :key_seq, :partition)
ON CONFLICT (order_id) DO UPDATE SET store_id = excluded.store_id, event_ms = excluded.event_ms,
                                     first_seen_ms = excluded.first_seen_ms,
                                     record = excluded.record, key_seq = excluded.key_seq,
                                     part = excluded.part
WHERE excluded.key_seq > enrich_seen.key_seq;

-- @emit
-- Every orderId first seen by the batch, in input order, keyed by storeId.
SELECT image ->> '$.store_id', image -> '$.record'
FROM changelog
WHERE seq > :from_seq AND seq <= :to_seq AND entity = 'enrich_order'
ORDER BY seq;
