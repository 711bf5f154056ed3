-- 007_telemetry_changelog.sql - telemetry's changelog: one row per changed
-- vehicle per batch instead of one per changed sensor.
--
-- sql/telemetry.sql @merge now appends the rows itself, after the batch is
-- merged: key = VIN, key_seq = the sum of the vehicle's sensor key_seqs (it
-- grows with every change of the vehicle), image = the whole vehicle:
--   {"vin": V, "sensors": {"<sensor>": [<value json>, received_at_ms,
--                                       produced_at_ms|null, key_seq], ...}}
-- (arrays, not objects: the image is most of what the changelog writes)
-- so the newest row of a VIN alone (all a compacted changelog topic keeps)
-- rebuilds the vehicle, and replay applies each sensor only when its key_seq
-- is newer. A vehicle that reports 30 sensors costs one changelog row and one
-- Kafka record per batch, not 30. Rows written before this migration (entity
-- vehicle_sensor, key "VIN#sensor", one sensor per image) still replay.
DROP TRIGGER vehicle_sensor_state_insert;
DROP TRIGGER vehicle_sensor_state_update;
