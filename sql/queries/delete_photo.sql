-- DELETE, step 2: the row goes, and its name's claim with it (migration 0002).
DELETE FROM photographs WHERE id = $1
