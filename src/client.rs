//! `portfolio-server upload DIR...`: sends a folder tree of photos to a running server.
//!
//! 1. Walk the folders for `.jpg`/`.jpeg` files (any case); other files are counted, not sent.
//! 2. Reduce each name as the server will ([`FileName::parse`]) and ask the server which names it
//!    has already (the listing, paged by `after_id`): those are skipped without sending a byte,
//!    so a rerun sends only what is missing.
//! 3. Send the rest in batches within the server's limits (`--batch-files`, `--batch-bytes`),
//!    `--jobs` requests at a time. Network errors and 5xx answers are retried with exponential
//!    backoff; 4xx answers are reported, not retried.
//! 4. Report: a progress bar on a terminal (files and bytes, rate, time left), plain lines
//!    otherwise; a summary of uploaded / skipped / failed with reasons; the failed paths in a
//!    file that `--from` takes on the next run. Exit code 1 when anything failed; Ctrl-C stops
//!    sending new batches, waits for those in flight and prints the summary so far.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::model::FileName;

/// What to send, and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub key: String,
    pub category: Option<String>,
    pub jobs: usize,
    pub batch_files: usize,
    pub batch_bytes: u64,
    pub retries: u32,
    pub dry_run: bool,
    /// Where the failed paths are written.
    pub failed_list: PathBuf,
    /// First backoff; doubled at each retry.
    pub backoff: Duration,
}

/// One photo to send.
#[derive(Debug, Clone)]
struct Photo {
    path: PathBuf,
    name: String,
    bytes: u64,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub uploaded: Vec<PathBuf>,
    /// (path, why): already on the server, or the same name as another file of this run.
    pub skipped: Vec<(PathBuf, String)>,
    pub failed: Vec<(PathBuf, String)>,
    /// Files that are not `.jpg`/`.jpeg`.
    pub ignored: usize,
    pub interrupted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Setup(String),
}

/// Files under `roots` (folders or single files), sorted, and how many were not JPEGs.
pub fn walk(roots: &[PathBuf]) -> Result<(Vec<PathBuf>, usize), ClientError> {
    let mut found = Vec::new();
    let mut ignored = 0;
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(p) = stack.pop() {
        let meta = std::fs::metadata(&p)
            .map_err(|e| ClientError::Setup(format!("{}: {e}", p.display())))?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(&p)
                .map_err(|e| ClientError::Setup(format!("{}: {e}", p.display())))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| ClientError::Setup(format!("{}: {e}", p.display())))?;
                stack.push(entry.path());
            }
        } else if is_jpeg_name(&p) {
            found.push(p);
        } else {
            ignored += 1;
        }
    }
    found.sort();
    Ok((found, ignored))
}

fn is_jpeg_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
}

/// How the run reports itself.
pub trait Progress: Send + Sync {
    fn start(&self, files: usize, bytes: u64);
    fn advance(&self, files: usize, bytes: u64);
    fn line(&self, text: &str);
    fn finish(&self);
}

/// Runs the upload of `paths` (already walked); `stop` is set by Ctrl-C.
pub fn run(
    opts: &Options,
    paths: Vec<PathBuf>,
    ignored: usize,
    progress: &dyn Progress,
    stop: &AtomicBool,
) -> Result<Summary, ClientError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(Some(Duration::from_secs(600)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut summary = Summary {
        ignored,
        ..Summary::default()
    };
    // Names as the server will store them; two files of one run with one name: the first goes.
    let mut by_name: HashMap<String, PathBuf> = HashMap::new();
    let mut todo = Vec::new();
    for path in paths {
        let raw = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match FileName::parse(&raw) {
            Err(e) => summary.failed.push((path, e.to_string())),
            Ok(name) => {
                let name = name.as_str().to_string();
                if let Some(first) = by_name.get(&name) {
                    summary
                        .skipped
                        .push((path, format!("same name as {} ({name})", first.display())));
                    continue;
                }
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                by_name.insert(name.clone(), path.clone());
                todo.push(Photo { path, name, bytes });
            }
        }
    }
    let existing = existing_names(&agent, opts)?;
    let (present, todo): (Vec<Photo>, Vec<Photo>) =
        todo.into_iter().partition(|p| existing.contains(&p.name));
    for p in present {
        summary
            .skipped
            .push((p.path, format!("already on the server as {}", p.name)));
    }
    if opts.dry_run {
        for p in &todo {
            progress.line(&format!("would send {} as {}", p.path.display(), p.name));
        }
        summary.failed.sort();
        return Ok(summary);
    }

    let batches = batches(todo, opts.batch_files, opts.batch_bytes);
    let total_files: usize = batches.iter().map(Vec::len).sum();
    let total_bytes: u64 = batches.iter().flatten().map(|p| p.bytes).sum();
    progress.start(total_files, total_bytes);
    let queue = Mutex::new(VecDeque::from(batches));
    let done_files = AtomicUsize::new(0);
    let done_bytes = AtomicU64::new(0);
    let results: Mutex<Vec<(PathBuf, Outcome)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            scope.spawn(|| {
                loop {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Some(batch) = queue.lock().expect("not poisoned").pop_front() else {
                        return;
                    };
                    let outcomes = send_batch(&agent, opts, &batch, stop, progress);
                    let (files, bytes) = (batch.len(), batch.iter().map(|p| p.bytes).sum::<u64>());
                    let files = done_files.fetch_add(files, Ordering::SeqCst) + files;
                    let bytes = done_bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
                    progress.advance(files, bytes);
                    results.lock().expect("not poisoned").extend(outcomes);
                }
            });
        }
    });
    progress.finish();
    for (path, outcome) in results.into_inner().expect("not poisoned") {
        match outcome {
            Outcome::Uploaded => summary.uploaded.push(path),
            Outcome::Skipped(why) => summary.skipped.push((path, why)),
            Outcome::Failed(why) => summary.failed.push((path, why)),
        }
    }
    summary.interrupted =
        stop.load(Ordering::SeqCst) && !queue.lock().expect("not poisoned").is_empty();
    if summary.interrupted {
        for batch in queue.into_inner().expect("not poisoned") {
            for p in batch {
                summary
                    .failed
                    .push((p.path, "not sent: interrupted".into()));
            }
        }
    }
    summary.uploaded.sort();
    summary.skipped.sort();
    summary.failed.sort();
    Ok(summary)
}

/// Batches of at most `files` files and `bytes` bytes (a larger file goes alone).
fn batches(photos: Vec<Photo>, files: usize, bytes: u64) -> Vec<Vec<Photo>> {
    let mut out: Vec<Vec<Photo>> = Vec::new();
    let mut size = 0;
    for p in photos {
        let fits = out
            .last()
            .is_some_and(|b| b.len() < files.max(1) && size + p.bytes <= bytes);
        if !fits {
            out.push(Vec::new());
            size = 0;
        }
        size += p.bytes;
        out.last_mut().expect("just pushed").push(p);
    }
    out
}

/// Every file name the server has, read from its listing.
fn existing_names(agent: &ureq::Agent, opts: &Options) -> Result<HashSet<String>, ClientError> {
    let mut names = HashSet::new();
    let mut after: i64 = 0;
    loop {
        let url = format!(
            "{}/api/images?limit=100&after_id={after}",
            opts.url.trim_end_matches('/')
        );
        let mut resp = with_retries(opts, &AtomicBool::new(false), || agent.get(&url).call())
            .map_err(|e| ClientError::Setup(format!("cannot read {url}: {e}")))?;
        let source = resp
            .headers()
            .get("x-data-source")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("database")
            .to_string();
        if source != "database" {
            return Err(ClientError::Setup(format!(
                "the server at {} cannot reach its database now (it answers from `{source}`); \
                 nothing was sent, try again later",
                opts.url
            )));
        }
        let page: Vec<serde_json::Value> = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_json()
            .map_err(|e| ClientError::Setup(format!("unexpected listing from {url}: {e}")))?;
        for item in &page {
            if let Some(f) = item["filename"].as_str() {
                names.insert(f.to_lowercase());
            }
        }
        match page.last().and_then(|i| i["id"].as_i64()) {
            Some(last) if page.len() == 100 => after = last,
            _ => return Ok(names),
        }
    }
}

enum Outcome {
    Uploaded,
    Skipped(String),
    Failed(String),
}

/// A request outcome worth retrying: no answer, or a 5xx.
enum Attempt {
    Answer(ureq::http::Response<ureq::Body>),
    Retry(String),
}

/// Calls `f` until it gets an answer that is not a 5xx, at most `opts.retries` more times.
fn with_retries(
    opts: &Options,
    stop: &AtomicBool,
    mut f: impl FnMut() -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<ureq::http::Response<ureq::Body>, String> {
    let mut delay = opts.backoff;
    let mut attempt = 0;
    loop {
        let outcome = match f() {
            Ok(r) if r.status().is_server_error() => Attempt::Retry(format!("HTTP {}", r.status())),
            Ok(r) => Attempt::Answer(r),
            Err(e) => Attempt::Retry(e.to_string()),
        };
        match outcome {
            Attempt::Answer(r) => return Ok(r),
            Attempt::Retry(why) if attempt >= opts.retries || stop.load(Ordering::SeqCst) => {
                return Err(format!("{why} (after {} attempts)", attempt + 1));
            }
            Attempt::Retry(_) => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(30));
                attempt += 1;
            }
        }
    }
}

const BOUNDARY: &str = "portfolio-upload-7f3b9c1e5d";

/// One `/api/upload-batch` request, retried as a whole on a network error or a 5xx (the server
/// stores a file only when all of it arrived, and a retried file that did get stored comes back
/// as skipped).
fn send_batch(
    agent: &ureq::Agent,
    opts: &Options,
    batch: &[Photo],
    stop: &AtomicBool,
    progress: &dyn Progress,
) -> Vec<(PathBuf, Outcome)> {
    let mut body = Vec::new();
    if let Some(c) = &opts.category {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\n{c}\r\n"
            )
            .as_bytes(),
        );
    }
    let mut unreadable = Vec::new();
    let mut sent = Vec::new();
    for p in batch {
        match std::fs::read(&p.path) {
            Ok(bytes) => {
                body.extend_from_slice(
                    format!(
                        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; \
                         filename=\"{}\"\r\nContent-Type: image/jpeg\r\n\r\n",
                        p.name
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(&bytes);
                body.extend_from_slice(b"\r\n");
                sent.push(p);
            }
            Err(e) => {
                unreadable.push((p.path.clone(), Outcome::Failed(format!("cannot read: {e}"))))
            }
        }
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    if sent.is_empty() {
        return unreadable;
    }
    let url = format!("{}/api/upload-batch", opts.url.trim_end_matches('/'));
    let answer = with_retries(opts, stop, || {
        agent
            .post(&url)
            .header("X-API-Key", &opts.key)
            .content_type(&format!("multipart/form-data; boundary={BOUNDARY}"))
            .send(&body[..])
    });
    let mut out = unreadable;
    let mut resp = match answer {
        Ok(r) => r,
        Err(why) => {
            progress.line(&format!("a batch of {} failed: {why}", sent.len()));
            out.extend(
                sent.iter()
                    .map(|p| (p.path.clone(), Outcome::Failed(why.clone()))),
            );
            return out;
        }
    };
    let status = resp.status();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    if !status.is_success() {
        let detail = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_string))
            .unwrap_or(text);
        let why = format!("HTTP {}: {detail}", status.as_u16());
        out.extend(
            sent.iter()
                .map(|p| (p.path.clone(), Outcome::Failed(why.clone()))),
        );
        return out;
    }
    let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let mut by_name: HashMap<String, Outcome> = HashMap::new();
    for item in report["uploaded"].as_array().into_iter().flatten() {
        if let Some(f) = item["filename"].as_str() {
            by_name.insert(f.to_string(), Outcome::Uploaded);
        }
    }
    for (list, reason, skipped) in [("skipped", "reason", true), ("failed", "error", false)] {
        for item in report[list].as_array().into_iter().flatten() {
            if let Some(f) = item["filename"].as_str() {
                let why = item[reason].as_str().unwrap_or("").to_string();
                by_name.insert(
                    f.to_string(),
                    if skipped {
                        Outcome::Skipped(why)
                    } else {
                        Outcome::Failed(why)
                    },
                );
            }
        }
    }
    for p in sent {
        let outcome = by_name
            .remove(&p.name)
            .unwrap_or_else(|| Outcome::Failed("not in the server's report".into()));
        out.push((p.path.clone(), outcome));
    }
    out
}

/// Writes the failed paths, one per line, for `--from`; removes the file when nothing failed.
pub fn write_failed_list(path: &Path, summary: &Summary) -> std::io::Result<()> {
    if summary.failed.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let mut f = std::fs::File::create(path)?;
    for (p, _) in &summary.failed {
        writeln!(f, "{}", p.display())?;
    }
    Ok(())
}

/// Paths from a list written by [`write_failed_list`].
pub fn read_list(path: &Path) -> Result<Vec<PathBuf>, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Setup(format!("{}: {e}", path.display())))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(PathBuf::from)
        .collect())
}

/// Progress on a terminal (a bar) or in a pipe (a line at most every two seconds).
pub struct Console {
    bar: Option<indicatif::ProgressBar>,
    state: Mutex<(usize, u64, Instant, Option<Instant>)>,
}

impl Console {
    pub fn new(terminal: bool) -> Console {
        Console {
            bar: terminal.then(|| {
                indicatif::ProgressBar::new(0).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} files  {msg}  {eta} left",
                    )
                    .expect("a valid template"),
                )
            }),
            state: Mutex::new((0, 0, Instant::now(), None)),
        }
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

impl Progress for Console {
    fn start(&self, files: usize, bytes: u64) {
        let mut s = self.state.lock().expect("not poisoned");
        *s = (files, bytes, Instant::now(), None);
        match &self.bar {
            Some(bar) => {
                bar.set_length(files as u64);
                bar.set_message(format!("0 of {:.1} MB", mb(bytes)));
            }
            None => eprintln!("sending {files} files, {:.1} MB", mb(bytes)),
        }
    }

    fn advance(&self, files: usize, bytes: u64) {
        let mut s = self.state.lock().expect("not poisoned");
        let (total_files, total_bytes, started, last) = *s;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let rate = mb(bytes) / secs;
        if let Some(bar) = &self.bar {
            bar.set_position(files as u64);
            bar.set_message(format!(
                "{:.1} of {:.1} MB  {rate:.1} MB/s",
                mb(bytes),
                mb(total_bytes)
            ));
            return;
        }
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
        if due || files == total_files {
            s.3 = Some(Instant::now());
            let left = if bytes > 0 {
                (total_bytes.saturating_sub(bytes)) as f64 / (bytes as f64 / secs)
            } else {
                0.0
            };
            eprintln!(
                "{files}/{total_files} files, {:.1}/{:.1} MB, {rate:.1} MB/s, about {left:.0} s left",
                mb(bytes),
                mb(total_bytes)
            );
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
