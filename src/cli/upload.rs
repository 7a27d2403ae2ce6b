//! `portfolio-server upload DIR...`: sends a folder tree of photos to a running server.
//!
//! 1. Walk the folders for `.jpg`/`.jpeg` files (any case); other files are counted, not sent.
//!    What cannot be walked or read (a link to nothing, an unreadable folder, a link back into
//!    the tree, a FIFO, a file over `--max-file-bytes`) is reported failed before a byte is
//!    read, and the run goes on.
//! 2. Reduce each name as the server will ([`FileName::parse`]) and ask the server which names it
//!    has already (the listing, paged by `after_id`): those are skipped without sending a byte,
//!    so a rerun sends only what is missing.
//! 3. Send the rest in batches within the server's limits (`--batch-files`, `--batch-bytes`),
//!    `--jobs` requests at a time, each body streamed from the files. Network errors, 5xx
//!    answers and requests silent for `--timeout` are retried with exponential backoff; 4xx
//!    answers are reported, not retried.
//! 4. Report: a progress bar on a terminal (files and bytes, rate, time left), plain lines
//!    otherwise; a summary of uploaded / skipped / failed with reasons; the failed paths in a
//!    file that `--from` takes on the next run. Exit code 1 when anything failed; Ctrl-C stops
//!    sending new batches, waits for those in flight and prints the summary so far.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io::{Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
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
    /// Longest wait for any read or write of a request to make progress (the answer included).
    pub timeout: Duration,
    /// Files larger than this are reported and never read (the server's `upload.max_file_bytes`).
    pub max_file_bytes: u64,
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

/// What [`walk`] found under its roots.
#[derive(Debug, Default)]
pub struct Walked {
    /// Paths with a `.jpg`/`.jpeg` name, sorted. [`run`] checks each before reading it.
    pub files: Vec<PathBuf>,
    /// Files that are not `.jpg`/`.jpeg` (and links to nothing without such a name).
    pub ignored: usize,
    /// What could not be walked, with why: an unreadable folder, a link to nothing with a
    /// photo's name, a link back into the tree. Reported failed; the run goes on.
    pub problems: Vec<(PathBuf, String)>,
}

/// The `.jpg`/`.jpeg` files under `roots` (folders or single files). Only a root that does not
/// exist stops it (a typo on the command line, before anything is sent); anything below that
/// cannot be read is a problem, reported, and the walk goes on. Links are followed, each folder
/// is walked once (a link back into the tree is reported, not followed round).
pub fn walk(roots: &[PathBuf]) -> Result<Walked, ClientError> {
    use std::os::unix::fs::MetadataExt;
    for root in roots {
        std::fs::metadata(root)
            .map_err(|e| ClientError::Setup(format!("{}: {e}", root.display())))?;
    }
    let mut walked = Walked::default();
    let mut folders_seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(p) = stack.pop() {
        let meta = match std::fs::metadata(&p) {
            Ok(meta) => meta,
            // A link to nothing (or round a loop of links): metadata follows it and fails.
            Err(e) => {
                if is_jpeg_name(&p) {
                    walked
                        .problems
                        .push((p, format!("a link to nothing, not sent ({e})")));
                } else {
                    walked.ignored += 1;
                }
                continue;
            }
        };
        if !meta.is_dir() {
            if is_jpeg_name(&p) {
                walked.files.push(p);
            } else {
                walked.ignored += 1;
            }
            continue;
        }
        if !folders_seen.insert((meta.dev(), meta.ino())) {
            let link = std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink());
            if link {
                walked.problems.push((
                    p,
                    "a link to a folder already walked (a loop, or a second way in); not \
                     followed"
                        .into(),
                ));
            }
            continue;
        }
        let entries = match std::fs::read_dir(&p) {
            Ok(entries) => entries,
            Err(e) => {
                walked.problems.push((
                    p,
                    format!("cannot read this folder ({e}); the photos in it were not sent"),
                ));
                continue;
            }
        };
        for entry in entries {
            match entry {
                Ok(entry) => stack.push(entry.path()),
                Err(e) => walked.problems.push((
                    p.clone(),
                    format!("cannot read an entry of this folder ({e})"),
                )),
            }
        }
    }
    walked.files.sort();
    walked.problems.sort();
    Ok(walked)
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

/// Runs the upload of what [`walk`] found (and `--from` listed); `stop` is set by Ctrl-C.
pub fn run(
    opts: &Options,
    walked: Walked,
    progress: &dyn Progress,
    stop: &AtomicBool,
) -> Result<Summary, ClientError> {
    // No total time limit (a large batch on a slow link takes what it takes), but no wait for
    // a silent server longer than `opts.timeout`: each read and each write of the connection
    // must make progress within it, the answer included.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(opts.timeout.min(Duration::from_secs(10))))
        .timeout_per_read(Some(opts.timeout))
        .timeout_per_write(Some(opts.timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut summary = Summary {
        ignored: walked.ignored,
        failed: walked.problems,
        ..Summary::default()
    };
    let paths = walked.files;
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
                // Looked at before anything is read: a FIFO named `.jpg` would block the
                // read for ever, and a file over the limit would be read only to be refused.
                let bytes = match std::fs::metadata(&path) {
                    Err(e) => {
                        summary.failed.push((path, format!("cannot read: {e}")));
                        continue;
                    }
                    Ok(m) if !m.is_file() => {
                        summary.failed.push((
                            path,
                            "not a regular file (a FIFO, socket or device); not read".into(),
                        ));
                        continue;
                    }
                    Ok(m) if m.len() > opts.max_file_bytes => {
                        summary.failed.push((
                            path,
                            format!(
                                "{} bytes, over the {}-byte limit (--max-file-bytes: the \
                                 server's upload.max_file_bytes); not sent",
                                m.len(),
                                opts.max_file_bytes
                            ),
                        ));
                        continue;
                    }
                    Ok(m) => m.len(),
                };
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
/// as skipped). The body is streamed from the files (never held in memory), re-read for each
/// attempt.
fn send_batch(
    agent: &ureq::Agent,
    opts: &Options,
    batch: &[Photo],
    stop: &AtomicBool,
    progress: &dyn Progress,
) -> Vec<(PathBuf, Outcome)> {
    let mut unreadable = Vec::new();
    let mut sent = Vec::new();
    for p in batch {
        match open_photo(&p.path) {
            Ok(_) => sent.push(p),
            Err(e) => {
                unreadable.push((p.path.clone(), Outcome::Failed(format!("cannot read: {e}"))))
            }
        }
    }
    if sent.is_empty() {
        return unreadable;
    }
    let url = format!("{}/api/upload-batch", opts.url.trim_end_matches('/'));
    let answer = with_retries(opts, stop, || {
        let (body, length) = form(opts.category.as_deref(), &sent).map_err(ureq::Error::Io)?;
        agent
            .post(&url)
            .header("X-API-Key", &opts.key)
            .header("Content-Length", length.to_string())
            .content_type(&format!("multipart/form-data; boundary={BOUNDARY}"))
            .send(ureq::SendBody::from_owned_reader(body))
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

/// A photo opened for reading, if it is still a regular file. Opened without blocking, so a
/// FIFO put in its place since the walk cannot hang the run.
fn open_photo(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// The multipart body of a batch, as a reader over its files, and its length: the `category`
/// field, then each photo (exactly the size it had when walked: a file that has shrunk since
/// fails the request rather than send a body shorter than announced), then the closing
/// boundary.
fn form(category: Option<&str>, photos: &[&Photo]) -> std::io::Result<(impl Read + 'static, u64)> {
    let mut body = Body::default();
    if let Some(c) = category {
        body.text(format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\n{c}\r\n"
        ));
    }
    for p in photos {
        let file = open_photo(&p.path)?;
        body.text(format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; \
             filename=\"{}\"\r\nContent-Type: image/jpeg\r\n\r\n",
            p.name
        ));
        body.length += p.bytes;
        body.parts.push(Box::new(Exactly {
            file: file.take(p.bytes),
            left: p.bytes,
        }));
        body.text("\r\n".into());
    }
    body.text(format!("--{BOUNDARY}--\r\n"));
    let length = body.length;
    let reader = body
        .parts
        .into_iter()
        .fold(Box::new(std::io::empty()) as Box<dyn Read>, |all, part| {
            Box::new(all.chain(part))
        });
    Ok((reader, length))
}

/// The parts of a body being put together, and their total length.
#[derive(Default)]
struct Body {
    parts: Vec<Box<dyn Read>>,
    length: u64,
}

impl Body {
    fn text(&mut self, s: String) {
        self.length += s.len() as u64;
        self.parts
            .push(Box::new(std::io::Cursor::new(s.into_bytes())));
    }
}

/// Exactly `left` bytes of a file, or an error if it ends sooner.
struct Exactly {
    file: std::io::Take<std::fs::File>,
    left: u64,
}

impl Read for Exactly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file got shorter while it was being sent",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
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

// ---------------------------------------------------------------------------------------------
// The subcommand

/// The arguments of `portfolio-server upload`.
#[derive(clap::Args)]
pub struct UploadArgs {
    /// Folders (searched recursively for .jpg/.jpeg) or files.
    #[arg(required_unless_present = "from")]
    pub paths: Vec<std::path::PathBuf>,
    /// The server.
    #[arg(long, default_value = "http://localhost:8000")]
    pub url: String,
    /// The admin key (default: ADMIN_API_KEY from the environment or .env).
    #[arg(long)]
    pub key: Option<String>,
    /// The category of every photo sent (default: the server's, `nature`).
    #[arg(long)]
    pub category: Option<String>,
    /// Requests at the same time.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Most files per request.
    #[arg(long, default_value_t = 20)]
    pub batch_files: usize,
    /// Most bytes per request (a larger file goes alone).
    #[arg(long, default_value_t = 64 << 20)]
    pub batch_bytes: u64,
    /// Retries of a request that got no answer or a 5xx (backoff 0.5 s, doubling).
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// List what would be sent; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also send the files listed in this file (one path per line, as --failed-list writes).
    #[arg(long)]
    pub from: Option<std::path::PathBuf>,
    /// Where the paths that failed are written (removed when nothing failed).
    #[arg(long, default_value = "upload-failed.txt")]
    pub failed_list: std::path::PathBuf,
    /// Seconds any read or write of a request may go without progress (the server's answer
    /// included) before the request counts as failed (and is retried).
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Files larger than this many bytes are reported and never read: the server's
    /// `upload.max_file_bytes` (25 MiB by default). Raise it if the server's is larger.
    #[arg(long, default_value_t = 25 << 20)]
    pub max_file_bytes: u64,
}

/// `portfolio-server upload`: the exit code says whether everything was sent (0), something
/// failed (1), the arguments were unusable (2) or Ctrl-C stopped it (130).
pub(super) async fn command(args: UploadArgs, settings: &crate::config::Settings) -> ExitCode {
    let UploadArgs {
        paths,
        url,
        key,
        category,
        jobs,
        batch_files,
        batch_bytes,
        retries,
        dry_run,
        from,
        failed_list,
        timeout,
        max_file_bytes,
    } = args;
    let key = key
        .or_else(|| {
            settings
                .auth
                .admin_api_key
                .as_ref()
                .map(|k| k.expose().to_string())
        })
        .unwrap_or_default();
    let opts = Options {
        url,
        key,
        category,
        jobs,
        batch_files,
        batch_bytes,
        retries,
        dry_run,
        failed_list,
        backoff: Duration::from_millis(500),
        timeout: Duration::from_secs(timeout.max(1)),
        max_file_bytes,
    };
    use std::io::IsTerminal;
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    if opts.key.is_empty() && !opts.dry_run {
        return fail(&"no admin key: pass --key or set ADMIN_API_KEY (in the environment or .env)");
    }
    let mut walked = match walk(&paths) {
        Ok(found) => found,
        Err(e) => return fail(&e),
    };
    if let Some(list) = &from {
        match read_list(list) {
            Ok(more) => walked.files.extend(more),
            Err(e) => return fail(&e),
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Ctrl-C stops new batches once; a second one quits at once.
    let watcher = tokio::spawn({
        let stop = stop.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping: waiting for the requests in flight (Ctrl-C again to quit)");
                stop.store(true, Ordering::SeqCst);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        }
    });
    // The sender is blocking HTTP: it runs on a blocking thread of the one runtime.
    let sent = tokio::task::spawn_blocking({
        let opts = opts.clone();
        move || {
            let progress = Console::new(std::io::stderr().is_terminal());
            run(&opts, walked, &progress, &stop)
        }
    })
    .await;
    watcher.abort();
    let summary = match sent {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return fail(&e),
        Err(e) => return fail(&e),
    };
    for (path, why) in &summary.skipped {
        println!("skipped\t{}\t{why}", path.display());
    }
    for (path, why) in &summary.failed {
        println!("failed\t{}\t{why}", path.display());
    }
    eprintln!(
        "{}{} uploaded, {} skipped (already there), {} failed{}.",
        if summary.interrupted {
            "Interrupted: "
        } else {
            ""
        },
        summary.uploaded.len(),
        summary.skipped.len(),
        summary.failed.len(),
        if summary.ignored > 0 {
            format!(
                "; {} files that are not .jpg/.jpeg were left out",
                summary.ignored
            )
        } else {
            String::new()
        }
    );
    if opts.dry_run {
        eprintln!("Dry run: nothing was sent.");
        return ExitCode::SUCCESS;
    }
    match write_failed_list(&opts.failed_list, &summary) {
        Ok(()) if !summary.failed.is_empty() => eprintln!(
            "The failed files are listed in {}; run again with --from {} to retry them.",
            opts.failed_list.display(),
            opts.failed_list.display()
        ),
        Ok(()) => {}
        Err(e) => eprintln!("cannot write {}: {e}", opts.failed_list.display()),
    }
    if summary.interrupted {
        ExitCode::from(130)
    } else if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::{Photo, form};

    fn photo(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Photo {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        Photo {
            path,
            name: name.into(),
            bytes: bytes.len() as u64,
        }
    }

    #[test]
    fn a_form_is_as_long_as_it_says_and_holds_each_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let a = photo(dir.path(), "a.jpg", &[1u8; 1000]);
        let b = photo(dir.path(), "b.jpg", b"");
        for category in [None, Some("street photo")] {
            let (mut reader, length) = form(category, &[&a, &b]).unwrap();
            let mut body = Vec::new();
            reader.read_to_end(&mut body).unwrap();
            assert_eq!(body.len() as u64, length);
            let text = String::from_utf8_lossy(&body);
            assert_eq!(text.matches("filename=\"").count(), 2);
            assert_eq!(text.contains("name=\"category\""), category.is_some());
            assert!(text.ends_with("--\r\n"));
            assert!(body.windows(1000).any(|w| w == [1u8; 1000]));
        }
    }

    #[test]
    fn a_file_that_shrank_or_grew_since_the_walk_never_breaks_the_framing() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = photo(dir.path(), "a.jpg", &[7u8; 100]);
        // Grew: only the walked size is sent, so the length stays true.
        std::fs::write(&a.path, [7u8; 150]).unwrap();
        let (mut reader, length) = form(None, &[&a]).unwrap();
        let mut body = Vec::new();
        reader.read_to_end(&mut body).unwrap();
        assert_eq!(body.len() as u64, length);
        // Shrank: an error, not a body shorter than announced.
        a.bytes = 200;
        let (mut reader, _) = form(None, &[&a]).unwrap();
        let e = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("got shorter"), "{e}");
    }
}
