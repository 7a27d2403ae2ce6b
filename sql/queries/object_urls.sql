-- reconcile: every row's object URLs, in id order.
SELECT id, filename, url, thumbnail_url, medium_url FROM photographs ORDER BY id
