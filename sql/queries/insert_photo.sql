-- Step 1 of the write protocol: the row, in the upload's transaction. Its trigger claims the
-- lower-cased name; a second upload of the name waits on that claim, then fails as a duplicate.
INSERT INTO photographs
  (filename, url, category, width, height, thumbnail_url, medium_url, placeholder, color)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING id
