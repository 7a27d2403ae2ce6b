\set off random(0, 9989)
SELECT id, filename, url, category, width, height FROM photographs WHERE (NULL::int8 IS NULL OR id > NULL::int8) AND (NULL::text IS NULL OR lower(category) = NULL::text) ORDER BY id LIMIT 10 OFFSET :off;
