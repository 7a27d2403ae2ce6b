//! `portfolio-server reconcile`: objects without rows, rows without objects, with the real
//! binary, against the local store and the in-test Supabase server.

use std::{
    process::Command,
    time::{Duration, SystemTime},
};

use crate::helpers::TestDb;

/// Runs `portfolio-server reconcile ARGS` in `dir` with `env`; returns (exit code, stdout,
/// stderr).
fn reconcile(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portfolio-server"))
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .arg("reconcile")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn age(path: &std::path::Path, hours: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(hours * 3600))
        .unwrap();
}

fn migrate(dir: &std::path::Path, url: &str) {
    let ok = Command::new(env!("CARGO_BIN_EXE_portfolio-server"))
        .current_dir(dir)
        .env_clear()
        .env("DATABASE_URL", url)
        .arg("migrate")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn reconcile_lists_orphans_and_missing_objects_and_deletes_only_old_unclaimed_orphans() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    migrate(dir.path(), &db.url);
    let base = "http://photos.test/media";
    db.execute(&format!(
        "INSERT INTO photographs (filename, url) VALUES \
         ('kept.jpg', '{base}/kept.jpg'), \
         ('gone.jpg', '{base}/gone.jpg'), \
         ('Elsewhere.jpg', 'https://res.cloudinary.com/demo/elsewhere.jpg'), \
         ('with space.jpg', '{base}/with%20space.jpg')"
    ));
    for (name, hours) in [
        ("kept.jpg", 100),
        ("with space.jpg", 100),
        ("old-orphan.jpg", 48),
        ("new-orphan.jpg", 0),
        ("elsewhere.jpg", 100), // no row points at it, but a row claims the name
        // Variants their row does not record (a killed backfill), in both key schemes.
        ("thumb~kept.jpg", 100),
        ("medium--kept.jpg", 100),
        // Variants of a photo with no row, in both key schemes.
        ("medium~old-orphan.jpg", 48),
        ("thumb--old-orphan.jpg", 48),
    ] {
        std::fs::write(media.join(name), b"jpeg").unwrap();
        age(&media.join(name), hours);
    }
    std::fs::write(media.join(".upload-1-2.tmp"), b"half").unwrap(); // never an object
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("APP_STORAGE__LOCAL_DIR", media.to_str().unwrap()),
        ("APP_STORAGE__PUBLIC_BASE_URL", base),
    ];

    let (code, out, err) = reconcile(dir.path(), &env, &[]);
    assert_eq!(code, 0, "{err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "missing\t2\tgone.jpg\thttp://photos.test/media/gone.jpg",
            "orphan\telsewhere.jpg\t4 days old",
            "orphan\tmedium~old-orphan.jpg\t2 days old",
            "orphan\tnew-orphan.jpg\t0 min old",
            "orphan\told-orphan.jpg\t2 days old",
            "orphan\tthumb--old-orphan.jpg\t2 days old",
        ],
        "{out}"
    );
    assert!(
        err.contains("9 objects, 4 rows (1 pointing elsewhere): 5 orphans"),
        "{err}"
    );
    assert!(err.contains("Dry run"), "{err}");
    assert!(
        media.join("old-orphan.jpg").exists(),
        "a dry run deletes nothing"
    );

    let (code, out, err) = reconcile(
        dir.path(),
        &env,
        &["--delete-orphans", "--grace-hours", "24"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted\told-orphan.jpg"), "{out}");
    assert!(out.contains("deleted\tmedium~old-orphan.jpg"), "{out}");
    assert!(out.contains("deleted\tthumb--old-orphan.jpg"), "{out}");
    assert!(
        out.contains("kept\telsewhere.jpg"),
        "a row claims the name: {out}"
    );
    assert!(
        err.contains("Deleted 3, kept 1 (a row has the name), left 1 younger"),
        "{err}"
    );
    let mut left: Vec<String> = std::fs::read_dir(&media)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            ".upload-1-2.tmp",
            "elsewhere.jpg",
            "kept.jpg",
            "medium--kept.jpg",
            "new-orphan.jpg",
            "thumb~kept.jpg",
            "with space.jpg"
        ]
    );
    // The placeholder claims were rolled back: the table is as it was.
    assert_eq!(
        db.rows("SELECT count(*) FROM photographs")[0][0].as_deref(),
        Some("4")
    );
}

#[test]
fn reconcile_pages_through_a_supabase_bucket() {
    use crate::fake_supabase::{BUCKET, FakeStorage, SERVICE_KEY, start_on_own_runtime};
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    migrate(dir.path(), &db.url);
    let fake = std::sync::Arc::new(FakeStorage::default());
    let base = start_on_own_runtime(fake.clone());
    {
        let mut objects = fake.objects.lock().unwrap();
        for i in 0..2500 {
            objects.insert(format!("{BUCKET}/p{i:04}.jpg"), b"x".to_vec());
        }
    }
    db.execute(&format!(
        "INSERT INTO photographs (filename, url) \
         SELECT 'p' || lpad(i::text, 4, '0') || '.jpg', \
                '{base}/storage/v1/object/public/{BUCKET}/p' || lpad(i::text, 4, '0') || '.jpg' \
         FROM generate_series(1, 2499) AS i"
    ));
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("SUPABASE_URL", base.as_str()),
        ("SUPABASE_KEY", SERVICE_KEY),
    ];
    let (code, out, err) = reconcile(dir.path(), &env, &["--delete-orphans"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("2500 objects, 2499 rows (0 pointing elsewhere): 1 orphans"),
        "{err}"
    );
    assert!(out.contains("deleted\tp0000.jpg"), "{out}");
    assert_eq!(fake.objects.lock().unwrap().len(), 2499);
}

/// A file whose name is not UTF-8 cannot be any key: it is left alone and never reported as
/// deleted. A storage folder that does not exist is an error naming it, not a clean bill.
#[test]
fn reconcile_leaves_names_it_cannot_hold_alone_and_says_when_the_folder_is_missing() {
    use std::os::unix::ffi::OsStrExt;
    let (db, dir) = (TestDb::new(), tempfile::tempdir().unwrap());
    migrate(dir.path(), &db.url);
    let media = dir.path().join("media");
    std::fs::create_dir(&media).unwrap();
    let odd = media.join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg"));
    std::fs::write(&odd, b"latin-1 name").unwrap();
    age(&odd, 100);
    std::fs::write(media.join("orphan.jpg"), b"no row").unwrap();
    age(&media.join("orphan.jpg"), 100);
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("APP_STORAGE__LOCAL_DIR", media.to_str().unwrap()),
        ("APP_STORAGE__PUBLIC_BASE_URL", "http://photos.test/media"),
    ];
    let (code, out, err) = reconcile(dir.path(), &env, &["--delete-orphans"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim().lines().collect::<Vec<_>>(),
        ["orphan\torphan.jpg\t4 days old", "deleted\torphan.jpg"]
    );
    assert!(odd.exists(), "left alone");
    assert!(!media.join("orphan.jpg").exists());

    let missing = dir.path().join("no-such-folder");
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("APP_STORAGE__LOCAL_DIR", missing.to_str().unwrap()),
    ];
    let (code, _, err) = reconcile(dir.path(), &env, &[]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("no-such-folder") && err.contains("APP_STORAGE__LOCAL_DIR"),
        "{err}"
    );
}
