-- The table exactly as the original Python server created it. IF NOT EXISTS: on a database the
-- original already created and filled, this adopts the table as it is, rows untouched.
CREATE TABLE IF NOT EXISTS photographs (
    id SERIAL PRIMARY KEY,
    filename VARCHAR(255) NOT NULL,
    url VARCHAR(2048) NOT NULL,
    category VARCHAR(50) DEFAULT 'nature' NOT NULL,
    width INTEGER NOT NULL DEFAULT 1080,
    height INTEGER NOT NULL DEFAULT 1920,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
