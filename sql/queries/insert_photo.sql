-- Step 1 of the write protocol: the row, in the upload's transaction. Its trigger claims the
-- lower-cased name; a second upload of the name waits on that claim, then fails as a duplicate.
-- $10: its variants are made after the answer (image.variants_after_answer).
INSERT INTO photographs
  (filename, url, category, width, height, thumbnail_url, medium_url, placeholder, color,
   variants_pending)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING id
