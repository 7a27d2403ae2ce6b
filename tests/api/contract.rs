//! The OpenAPI document tells the truth: schemathesis (PyPI, installed by `tests/run.sh`)
//! generates requests from `/openapi.json` and runs every one of its checks against the real
//! listener, on a database with photos in it. Settings the document cannot express are in
//! `tests/schemathesis.toml` and `tests/schemathesis_hooks.py`, each with its reason.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use portfolio_server::app::App;

use crate::helpers::{API_KEY, TestDb, upload_settings};

const VERSION: &str = "4.32.5";
/// A fixed seed: the run is the same every time (`SCHEMATHESIS_SEED` tries another).
const SEED: &str = "1";

#[tokio::test(flavor = "multi_thread")]
async fn every_schemathesis_check_passes_on_every_operation() {
    let venv = crate::s3::cache_dir().join(format!("schemathesis-{VERSION}"));
    let bin = venv.join("bin/schemathesis");
    assert!(
        bin.exists(),
        "schemathesis {VERSION} is not installed at {}: run `bash tests/run.sh --install-only` \
         (or `python3 -m venv {} && {}/bin/pip install schemathesis=={VERSION}`)",
        bin.display(),
        venv.display(),
        venv.display()
    );
    let db = TestDb::new();
    let media = tempfile::tempdir().unwrap();
    let mut s = upload_settings(Some(&db.url), media.path());
    // Its auth checks send wrong keys on purpose; throttled, the rest of the run would be
    // answered 429 (documented, so passing) and test nothing. tests/api/throttle.rs tests it.
    s.auth.wrong_key_burst = 0;
    let app = App::build(s).await.unwrap();
    let addr = app.local_addr();
    let server = tokio::spawn(app.run_until_stopped(std::future::pending()));
    db.seed(5);
    let work = tempfile::tempdir().unwrap();
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.into());
    let (status, output) = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(&bin)
            .arg("--config-file")
            .arg(tests.join("schemathesis.toml"))
            .args([
                "run",
                &format!("http://{addr}/openapi.json"),
                "--checks",
                "all",
            ])
            .args(["--max-examples", "100", "--seed", &seed, "--no-color"])
            .args(["-H", &format!("X-API-Key: {API_KEY}")])
            .env("PYTHONPATH", &tests)
            .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
            .current_dir(work.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // About 10 s against a debug build here; a hung run fails instead of hanging CI.
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut output = String::new();
        let _ = child.stdout.take().unwrap().read_to_string(&mut output);
        let _ = child.stderr.take().unwrap().read_to_string(&mut output);
        (status, output)
    })
    .await
    .unwrap();
    server.abort();
    let status = status.unwrap_or_else(|| panic!("schemathesis ran over 300 s:\n{output}"));
    assert!(status.success(), "schemathesis found failures:\n{output}");
    // It ran and tested things: a run that tested nothing must not pass.
    let tested = output
        .lines()
        .find_map(|l| l.trim().split_once(" generated, ")?.0.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(tested >= 500, "only {tested} cases generated:\n{output}");
    // Every operation of the document: "Selected: 12/12", then "Tested: 12".
    let total = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Selected: ")?.split_once('/'))
        .map(|(_, total)| total.trim().to_string())
        .unwrap_or_default();
    assert!(
        !total.is_empty() && output.contains(&format!("Tested: {total}\n")),
        "not every operation was tested:\n{output}"
    );
}
