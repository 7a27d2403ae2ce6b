-- One photograph by id ($1), as a Photo.
SELECT id, filename, url, category, width, height, thumbnail_url, medium_url, placeholder, color
FROM photographs
WHERE id = $1
