-- Uploads answered before their variants were made (image.variants_after_answer): true until the
-- background task has made them. A constant default, so adding the column is instant on a
-- filled table; rows already there, and rows the original server inserts, are false (their
-- variants are `portfolio-server variants backfill`'s to make, never made unasked). The partial
-- index holds only the rows waiting, so looking for them costs nothing on a large table.
ALTER TABLE photographs
    ADD COLUMN IF NOT EXISTS variants_pending BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS photographs_variants_pending
    ON photographs (id) WHERE variants_pending;
