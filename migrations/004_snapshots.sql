-- 004_snapshots.sql - the manifest of every snapshot (engine/snapshot.c).
--
-- One row per snapshot file written from this database. The same manifest is
-- written as JSON next to the file (snapshot-<id>.json) and, by the daemon, to
-- the compacted <prefix>-snapshots topic, so recovery finds it even when this
-- database is the thing that was lost.
--   snapshot_id      "20261121T063600123Z-<seq>": time of the copy and its last seq
--   path             the snapshot file
--   last_seq         highest changelog seq contained in the copy
--   changelog_offsets JSON object {"<topic>.<partition>": offset} read in the
--                    same read transaction as the copy
--   created_ms       epoch ms
--   bytes, checksum  size and FNV-1a 64-bit checksum (16 hex digits) of the file
CREATE TABLE snapshots (
    snapshot_id       TEXT PRIMARY KEY,
    path              TEXT NOT NULL,
    last_seq          INTEGER NOT NULL,
    changelog_offsets TEXT NOT NULL,
    created_ms        INTEGER NOT NULL,
    bytes             INTEGER NOT NULL,
    checksum          TEXT NOT NULL
) STRICT;
