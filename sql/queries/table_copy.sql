-- The table copy kept for outages: every photograph in id order, at most $1 rows (the caller
-- asks for one more than its bound, to tell "too big" from "exactly full").
SELECT id, filename, url, category, width, height, thumbnail_url, medium_url, placeholder, color
FROM photographs
ORDER BY id
LIMIT $1
