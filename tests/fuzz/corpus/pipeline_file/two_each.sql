-- @pipeline each2
-- @entity each2
-- @each k v data
-- @each k2 v2 data
-- @setup
CREATE TABLE IF NOT EXISTS e (k, v);
-- @stage
INSERT INTO e VALUES (:k, :v);
