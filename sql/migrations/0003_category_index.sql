-- Listing by category in id order (`?category=`, matched case-insensitively because rows the
-- original wrote may say "Landscape"): one index range scan, at any depth, with or without a
-- keyset start.
CREATE INDEX IF NOT EXISTS photographs_category_id_idx ON photographs (lower(category), id);
