-- What the image pipeline makes for each photo: its variants and a placeholder. Nullable, with
-- no default, so adding them is instant on a filled table, rows already there (and rows the
-- original server still inserts during a switch-over) read as "not made yet", and
-- `portfolio-server variants backfill` fills them in.
ALTER TABLE photographs
    ADD COLUMN IF NOT EXISTS thumbnail_url VARCHAR(2048),
    ADD COLUMN IF NOT EXISTS medium_url VARCHAR(2048),
    ADD COLUMN IF NOT EXISTS placeholder VARCHAR(255),
    ADD COLUMN IF NOT EXISTS color VARCHAR(7);
