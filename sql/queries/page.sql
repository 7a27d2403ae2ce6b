-- One page of the listing, in id order. Every filter is optional:
--   $1 limit, $2 offset, $3 after_id (keyset: rows with id > $3), $4 lower-cased category.
-- With $3 set, the primary key index starts at $3 (cheap at any depth); with $4 set,
-- photographs_category_id_idx does the same within the category.
SELECT id, filename, url, category, width, height, thumbnail_url, medium_url, placeholder, color
FROM photographs
WHERE ($3::int8 IS NULL OR id > $3)
  AND ($4::text IS NULL OR lower(category) = $4)
ORDER BY id
LIMIT $1 OFFSET $2
