-- Lock photograph $1 for the rest of the transaction; no row: it was deleted meanwhile.
SELECT 1 FROM photographs WHERE id = $1 FOR UPDATE
