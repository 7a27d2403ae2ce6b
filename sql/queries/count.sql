-- X-Total-Count: all photographs, or those of one (lower-cased) category.
SELECT count(*) FROM photographs WHERE ($1::text IS NULL OR lower(category) = $1)
