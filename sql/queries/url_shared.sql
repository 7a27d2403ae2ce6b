-- Whether another row than $2 points at the object URL $1 (rows of the original may share one).
SELECT 1 FROM photographs WHERE url = $1 AND id <> $2 LIMIT 1
