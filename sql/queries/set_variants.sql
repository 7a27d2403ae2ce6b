-- variants backfill: record what was made for photograph $1 (a variant turned off keeps its URL).
UPDATE photographs
SET thumbnail_url = COALESCE($2, thumbnail_url),
    medium_url = COALESCE($3, medium_url),
    placeholder = $4,
    color = $5
WHERE id = $1
