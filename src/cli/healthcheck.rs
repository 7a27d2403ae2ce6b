//! `portfolio-server healthcheck`: one probe of the server on this machine, for a container's
//! `HEALTHCHECK` (the image has no shell and no curl).

use std::{process::ExitCode, time::Duration};

use crate::config::Settings;

/// GETs `path` from `127.0.0.1` on the configured port: exit 0 on 200, 1 otherwise (the answer
/// or the error on stderr).
pub(super) fn command(settings: &Settings, path: &str) -> ExitCode {
    let url = format!("http://127.0.0.1:{}{path}", settings.server.port);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .into();
    match agent.get(&url).call() {
        Ok(r) if r.status() == 200 => ExitCode::SUCCESS,
        Ok(mut r) => {
            let body = r.body_mut().read_to_string().unwrap_or_default();
            eprintln!("{url}: {} {body}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            ExitCode::FAILURE
        }
    }
}
