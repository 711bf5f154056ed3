-- @pipeline each2
-- @entity each2
-- @field id id id required
-- @each k v data except a,b
-- @setup
CREATE TABLE IF NOT EXISTS e (k, v);
-- @stage
INSERT INTO e VALUES (:k, :v);
