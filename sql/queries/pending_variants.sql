-- The uploads whose variants are still to be made after their answer, oldest first.
SELECT id, filename, url FROM photographs WHERE variants_pending ORDER BY id
