-- Every change to photographs, whoever makes it (any replica of this server, the original
-- server, psql, the Supabase dashboard), notifies channel `photographs_changed` at commit; each
-- replica listens and drops its cached pages (src/notify.rs). One notification per statement
-- (PostgreSQL folds identical ones within a transaction); the payload is the statement's kind.
CREATE OR REPLACE FUNCTION photographs_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('photographs_changed', TG_OP);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS photographs_notify ON photographs;
CREATE TRIGGER photographs_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON photographs
    FOR EACH STATEMENT EXECUTE FUNCTION photographs_notify();
