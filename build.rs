//! Embedded folders are read at compile time, but cargo does not notice a file *added* to them.
//! Watching the folders fixes that, and lets us check migration names before they ship.

fn main() {
    println!("cargo:rerun-if-changed=sql");
    println!("cargo:rerun-if-changed=assets");
    let mut names: Vec<String> = std::fs::read_dir("sql/migrations")
        .expect("sql/migrations exists")
        .map(|e| {
            e.expect("readable")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    for name in &names {
        let ok = name.len() > 5
            && name.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && name.as_bytes()[4] == b'_'
            && name.ends_with(".sql");
        assert!(
            ok,
            "sql/migrations/{name}: migrations are named NNNN_what.sql"
        );
    }
    for pair in names.windows(2) {
        assert_ne!(pair[0][..4], pair[1][..4], "two migrations share a number");
    }
}
