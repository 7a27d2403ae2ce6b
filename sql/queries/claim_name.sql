-- Clean-up: claim the name $1 as an upload would, in a transaction that is always rolled back
-- (the placeholder row is never seen). A unique violation means a committed row holds the name.
INSERT INTO photographs (filename, url) VALUES ($1, '') RETURNING id
