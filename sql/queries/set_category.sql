-- PATCH /api/images/{id}: move photograph $1 to category $2.
UPDATE photographs SET category = $2 WHERE id = $1
RETURNING id, filename, url, category, width, height, thumbnail_url, medium_url, placeholder, color
