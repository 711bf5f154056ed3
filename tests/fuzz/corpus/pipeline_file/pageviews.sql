-- examples/pipelines/pageviews.sql - page views per page per minute.
--
-- Events: {"page": "/home", "user": "u17", "ts": 1700000000000}
-- State:  page_views, one row per page and minute (window_ms).
-- Run:    tally run --pipeline examples/pipelines/pageviews.sql --brokers HOST:PORT
--         (input pageviews.input, output pageviews.output; README: Write your own pipeline)
--
-- @pipeline pageviews
-- @param window_ms 60000
-- @field page     page  text     required
-- @field user_id  user  id       required
-- @field event_ms ts    time_ms  required
-- @state
CREATE TABLE IF NOT EXISTS page_views (
    page            TEXT    NOT NULL,
    window_start_ms INTEGER NOT NULL,
    views           INTEGER NOT NULL,
    PRIMARY KEY (page, window_start_ms)
);
-- @fold
INSERT INTO page_views (page, window_start_ms, views)
VALUES (:page, :event_ms - :event_ms % :window_ms, 1)
ON CONFLICT DO UPDATE SET views = views + 1;
