//! The real binary: zero-config start, configuration errors, graceful shutdown.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

/// Starts the binary in `dir` with exactly `env`, waits for its "listening" line and returns
/// the child, its port and the lines it logged so far.
fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> (std::process::Child, u16, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portfolio-server"))
        .current_dir(dir)
        .env_clear()
        .env("PORT", "0")
        .env("APP_SERVER__HOST", "127.0.0.1")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let port = loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "exited early: {lines:#?}"
        );
        let plain = strip_ansi(&line);
        lines.push(plain.clone());
        if let Some(i) = plain.find("listening address=") {
            let addr = plain[i + "listening address=".len()..].trim();
            break addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    (child, port, lines)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn get(port: u16, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut r = agent
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("the server did not stop within 5 s of SIGTERM");
}

#[test]
fn zero_config_start_serves_embedded_photographs_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port, lines) = start(dir.path(), &[]);
    assert!(
        lines.iter().any(|l| l.contains("no database configured")),
        "one clear line says there is no database: {lines:#?}"
    );
    let (status, body) = get(port, "/api/images");
    assert_eq!(status, 200);
    let items: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(items.as_array().unwrap().len(), 10);
    let (status, _) = get(port, "/api/images?limit=100");
    assert_eq!(status, 200);

    let exit = terminate(&mut child);
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
}

#[test]
fn a_bad_setting_stops_start_up_with_a_message_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    crate::helpers::write_file(
        dir.path(),
        "Config.toml",
        "[cache]\nttl_secs = \"a while\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_portfolio-server"))
        .current_dir(dir.path())
        .env_clear()
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(
        err.contains("ttl_secs") && err.contains("Config.toml"),
        "{err}"
    );
}

#[test]
fn secrets_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    crate::helpers::write_file(
        dir.path(),
        ".env",
        "DATABASE_URL=postgres://user:hunter2secret@127.0.0.1:1/db\nADMIN_API_KEY=topsecretkey\n",
    );
    let (mut child, port, mut lines) = start(dir.path(), &[("RUST_LOG", "debug")]);
    let _ = get(port, "/api/health");
    let _ = get(port, "/api/images");
    terminate(&mut child);
    lines.push(String::new());
    let all = lines.join("\n");
    assert!(
        all.contains("127.0.0.1:1/db"),
        "the target is logged: {all}"
    );
    assert!(!all.contains("hunter2secret"), "{all}");
    assert!(!all.contains("topsecretkey"), "{all}");
}
