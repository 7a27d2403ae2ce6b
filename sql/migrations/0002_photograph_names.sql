-- Case-insensitive uniqueness of file names, for new rows, without touching old ones.
--
-- A unique index on lower(filename) cannot be built on a database the original filled, because it
-- may already hold duplicates (the original had no constraint). Instead each name is claimed in
-- its own table: existing names are claimed once (by their oldest row), and a trigger claims the
-- name of every new row in the same transaction as its INSERT. A second row with a taken name
-- fails with a unique violation on photograph_names_pkey, whoever inserts it (this server, or the
-- old one still running during a switch-over). No existing row is changed or removed.
CREATE TABLE photograph_names (
    name TEXT PRIMARY KEY,                      -- lower(filename)
    photograph_id INTEGER NOT NULL REFERENCES photographs (id) ON DELETE CASCADE
);

INSERT INTO photograph_names (name, photograph_id)
SELECT lower(filename), min(id) FROM photographs GROUP BY lower(filename);

CREATE INDEX photograph_names_photograph_id_idx ON photograph_names (photograph_id);

CREATE FUNCTION photographs_claim_name() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO photograph_names (name, photograph_id) VALUES (lower(NEW.filename), NEW.id);
    RETURN NEW;
END
$$;

CREATE TRIGGER photographs_claim_name
    AFTER INSERT ON photographs
    FOR EACH ROW EXECUTE FUNCTION photographs_claim_name();
