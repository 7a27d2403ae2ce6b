-- variants backfill: the rows that lack a placeholder or colour, or a variant that is turned on
-- ($1 thumbnails, $2 medium).
SELECT id, filename, url FROM photographs
WHERE placeholder IS NULL OR color IS NULL
   OR ($1 AND thumbnail_url IS NULL) OR ($2 AND medium_url IS NULL)
ORDER BY id
