-- 002_orders.sql - state of the orders pipeline (sql/orders.sql).
--
-- One row per (store, product, tumbling window). Money is held in integer
-- micro-units (1 unit = 1,000,000) so sums are exact; the order_windows view
-- turns it back into decimal text. STRICT makes an integer overflow in a sum an
-- error instead of a silent conversion to floating point.
CREATE TABLE order_window_state (
    store_id        TEXT NOT NULL,
    product_id      TEXT NOT NULL,
    window_start_ms INTEGER NOT NULL,
    sum_micros      INTEGER NOT NULL,
    count           INTEGER NOT NULL,
    key_seq         INTEGER NOT NULL,
    PRIMARY KEY (store_id, product_id, window_start_ms)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER order_window_state_insert AFTER INSERT ON order_window_state
BEGIN
    INSERT INTO changelog (entity, key, key_seq, image, delta, changed_ms)
    VALUES ('order_window',
            NEW.store_id || '#' || NEW.product_id || '#' || NEW.window_start_ms,
            NEW.key_seq,
            json_object('store_id', NEW.store_id, 'product_id', NEW.product_id,
                        'window_start_ms', NEW.window_start_ms,
                        'sum_micros', NEW.sum_micros, 'count', NEW.count),
            NULL,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

CREATE TRIGGER order_window_state_update AFTER UPDATE ON order_window_state
BEGIN
    INSERT INTO changelog (entity, key, key_seq, image, delta, changed_ms)
    VALUES ('order_window',
            NEW.store_id || '#' || NEW.product_id || '#' || NEW.window_start_ms,
            NEW.key_seq,
            json_object('store_id', NEW.store_id, 'product_id', NEW.product_id,
                        'window_start_ms', NEW.window_start_ms,
                        'sum_micros', NEW.sum_micros, 'count', NEW.count),
            json_object('sum_micros', NEW.sum_micros - OLD.sum_micros,
                        'count', NEW.count - OLD.count),
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

-- The delta of a key's first change would repeat its image, so it is NULL.

-- Stable view for users: window_start in epoch ms, sum as exact decimal text
-- with at least two decimals ("251.13", "10.50", "-3.125").
CREATE VIEW order_windows (store_id, product_id, window_start, sum, count) AS
SELECT store_id, product_id, window_start_ms,
       CASE WHEN sum_micros < 0 THEN '-' ELSE '' END
         || (abs(sum_micros) / 1000000) || '.'
         || CASE WHEN length(rtrim(substr('00000' || (abs(sum_micros) % 1000000), -6), '0')) <= 2
                 THEN substr(substr('00000' || (abs(sum_micros) % 1000000), -6), 1, 2)
                 ELSE rtrim(substr('00000' || (abs(sum_micros) % 1000000), -6), '0') END,
       count
FROM order_window_state;
