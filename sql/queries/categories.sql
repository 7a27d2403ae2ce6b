-- GET /api/categories: each lower-cased category (as listings match them) and its count.
SELECT lower(category), count(*)
FROM photographs
GROUP BY lower(category)
ORDER BY lower(category)
