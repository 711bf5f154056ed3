-- 001_core.sql - tables every pipeline shares.
--
-- meta       key/value facts about this database: input positions, changelog
--            offsets, per-pipeline settings (window size) and counters. Written in
--            the same transaction as the state it describes, so a reader that sees
--            a state also sees the positions that produced it.
-- changelog  one row per state change, appended by triggers on the state tables
--            (see 002_orders.sql, 003_telemetry.sql). Row layout:
--              seq         global, strictly increasing (AUTOINCREMENT: a seq is
--                          never reused, even after pruning)
--              entity      which state table the row belongs to
--              key         the entity's key as text, e.g. "s1#p7#1700000040000"
--              key_seq     per-key version, 1 for the first change of a key; replay
--                          applies a row only when key_seq is newer than the key's
--              image       after-image of the whole state row, as JSON
--              delta       change relative to the previous image, as JSON (NULL when
--                          a delta means nothing for the entity)
--              changed_ms  wall-clock time of the change, epoch milliseconds
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value ANY
) STRICT;

CREATE TABLE changelog (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    entity     TEXT NOT NULL,
    key        TEXT NOT NULL,
    key_seq    INTEGER NOT NULL,
    image      TEXT NOT NULL,
    delta      TEXT,
    changed_ms INTEGER NOT NULL
) STRICT;
