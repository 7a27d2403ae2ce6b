-- variants backfill and the background task: record what was made for photograph $1 (a variant
-- turned off keeps its URL); nothing is pending for it any more.
UPDATE photographs
SET thumbnail_url = COALESCE($2, thumbnail_url),
    medium_url = COALESCE($3, medium_url),
    placeholder = $4,
    color = $5,
    variants_pending = false
WHERE id = $1
