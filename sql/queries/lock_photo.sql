-- Lock photograph $1 for the rest of the transaction, and read the variants it already has; no
-- row: it was deleted meanwhile.
SELECT thumbnail_url, medium_url FROM photographs WHERE id = $1 FOR UPDATE
