//! Migrations from an empty database and from one the original Python server created and filled.

use poem::http::StatusCode;

use crate::helpers::{TestApp, TestDb};

/// The table as the original's `create_photographs_table` made it.
const ORIGINAL_TABLE: &str = "CREATE TABLE photographs (
    id SERIAL PRIMARY KEY,
    filename VARCHAR(255) NOT NULL,
    url VARCHAR(2048) NOT NULL,
    category VARCHAR(50) DEFAULT 'nature' NOT NULL,
    width INTEGER NOT NULL DEFAULT 1080,
    height INTEGER NOT NULL DEFAULT 1920,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)";

const SNAPSHOT: &str =
    "SELECT id, filename, url, category, width, height, created_at FROM photographs ORDER BY id";

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_database_is_migrated_at_start_up() {
    let db = TestDb::new();
    let _app = TestApp::with_db(&db).await;
    let applied = db.rows("SELECT name FROM schema_migrations ORDER BY name");
    let names: Vec<_> = applied.iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(
        names,
        [
            "0001_photographs.sql",
            "0002_photograph_names.sql",
            "0003_category_index.sql",
            "0004_photo_variants.sql",
            "0005_photographs_notify.sql",
            "0006_variants_pending.sql"
        ]
    );
    let count = db.rows("SELECT count(*) FROM photographs");
    assert_eq!(count[0][0].as_deref(), Some("0"));

    // A second start applies nothing and changes nothing.
    let record = "SELECT name, sha256, applied_at FROM schema_migrations ORDER BY name";
    let before = db.rows(record);
    let _again = TestApp::with_db(&db).await;
    assert_eq!(db.rows(record), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_the_original_filled_keeps_every_row_including_duplicates() {
    let db = TestDb::new();
    db.execute(ORIGINAL_TABLE);
    db.execute(
        "INSERT INTO photographs (filename, url, category, width, height) VALUES
           ('sunset.jpg', 'https://x.supabase.co/storage/v1/object/public/images/sunset.jpg', 'nature', 4000, 3000),
           ('sunset.jpg', 'https://x.supabase.co/storage/v1/object/public/images/sunset.jpg', 'nature', 4000, 3000),
           ('Sunset.JPG', 'https://x.supabase.co/storage/v1/object/public/images/Sunset.JPG', 'travel', 3000, 4000),
           ('city.jpeg', 'https://x.supabase.co/storage/v1/object/public/images/city.jpeg', 'street', 1080, 1920)",
    );
    db.execute(
        "INSERT INTO photographs (filename, url) VALUES ('defaults.jpg', 'https://x/defaults.jpg')",
    );
    let before = db.rows(SNAPSHOT);
    assert_eq!(before.len(), 5);

    let app = TestApp::with_db(&db).await;

    assert_eq!(db.rows(SNAPSHOT), before, "no existing row changed or lost");
    let listing = app.get("/api/images?limit=100").await;
    assert_eq!(listing.status, StatusCode::OK);
    assert_eq!(listing.header("x-data-source"), Some("database"));
    assert_eq!(listing.ids(), vec![1, 2, 3, 4, 5]);
    assert_eq!(listing.header("x-total-count"), Some("5"));

    // From now on a name is unique, case-insensitively, whoever inserts the row.
    let dup = db
        .try_execute("INSERT INTO photographs (filename, url) VALUES ('SUNSET.jpg', 'https://x/s')")
        .expect_err("a taken name is refused");
    let dberr = dup.as_db_error().expect("a database error");
    assert_eq!(dberr.code().code(), "23505");
    assert_eq!(dberr.constraint(), Some("photograph_names_pkey"));
    db.execute("INSERT INTO photographs (filename, url) VALUES ('new.jpg', 'https://x/new')");
    assert_eq!(
        db.rows("SELECT count(*) FROM photographs")[0][0].as_deref(),
        Some("6")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_starting_together_migrate_once() {
    let db = TestDb::new();
    let mut starts = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        starts.push(tokio::spawn(async move {
            let app = TestApp::spawn(crate::helpers::settings(Some(&url))).await;
            app.get("/api/health").await.status
        }));
    }
    for s in starts {
        assert_eq!(s.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        db.rows("SELECT count(*) FROM schema_migrations")[0][0].as_deref(),
        Some("6")
    );
}

#[test]
fn the_migrate_subcommand_applies_migrations_and_exits() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let migrate = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_portfolio-server"))
            .arg("migrate")
            .current_dir(dir.path())
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap()
    };
    let out = migrate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        db.rows("SELECT count(*) FROM schema_migrations")[0][0].as_deref(),
        Some("6")
    );
    let again = migrate(); // idempotent
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("up to date"));
}
