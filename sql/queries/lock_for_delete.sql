-- DELETE, step 1: lock photograph $1 and read the URLs of its objects.
SELECT filename, url, thumbnail_url, medium_url FROM photographs WHERE id = $1 FOR UPDATE
