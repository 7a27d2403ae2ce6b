-- Listing by category in id order (`?category=`): one index range scan, at any depth.
CREATE INDEX IF NOT EXISTS photographs_category_id_idx ON photographs (category, id);
