-- One page of the listing. ORDER BY the primary key: an index scan, no sort.
SELECT id, filename, url, category, width, height
FROM photographs
ORDER BY id
LIMIT $1 OFFSET $2
