use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portfolio_server::{
    app::{App, shutdown_signal},
    backfill, client,
    config::{LogFormat, Settings},
    db::Db,
    telemetry,
};

/// The photo-portfolio API server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Compare the object store with the table: objects without a row, rows without an object.
    Reconcile {
        /// Delete objects that no row points at and no row claims by name (else: a dry run).
        #[arg(long)]
        delete_orphans: bool,
        /// Leave orphans younger than this many hours alone.
        #[arg(long, default_value_t = 24)]
        grace_hours: u64,
    },
    /// Send the photos in folders to a running server, skipping those it has already.
    Upload {
        /// Folders (searched recursively for .jpg/.jpeg) or files.
        #[arg(required_unless_present = "from")]
        paths: Vec<std::path::PathBuf>,
        /// The server.
        #[arg(long, default_value = "http://localhost:8000")]
        url: String,
        /// The admin key (default: ADMIN_API_KEY from the environment or .env).
        #[arg(long)]
        key: Option<String>,
        /// The category of every photo sent (default: the server's, `nature`).
        #[arg(long)]
        category: Option<String>,
        /// Requests at the same time.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Most files per request.
        #[arg(long, default_value_t = 20)]
        batch_files: usize,
        /// Most bytes per request (a larger file goes alone).
        #[arg(long, default_value_t = 64 << 20)]
        batch_bytes: u64,
        /// Retries of a request that got no answer or a 5xx (backoff 0.5 s, doubling).
        #[arg(long, default_value_t = 5)]
        retries: u32,
        /// List what would be sent; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also send the files listed in this file (one path per line, as --failed-list writes).
        #[arg(long)]
        from: Option<std::path::PathBuf>,
        /// Where the paths that failed are written (removed when nothing failed).
        #[arg(long, default_value = "upload-failed.txt")]
        failed_list: std::path::PathBuf,
        /// Seconds any read or write of a request may go without progress (the server's answer
        /// included) before the request counts as failed (and is retried).
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Files larger than this many bytes are reported and never read: the server's
        /// `upload.max_file_bytes` (25 MiB by default). Raise it if the server's is larger.
        #[arg(long, default_value_t = 25 << 20)]
        max_file_bytes: u64,
    },
    /// The thumb and medium variants and the placeholder of each photo.
    Variants {
        #[command(subcommand)]
        action: VariantsAction,
    },
}

#[derive(Subcommand)]
enum VariantsAction {
    /// Make them for every row that has none yet (rows from before this version, or from the
    /// original server). Resumable, idempotent, and safe while the server runs.
    Backfill,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            telemetry::init(LogFormat::Text);
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log.format);
    if let Some(Command::Upload {
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
    }) = cli.command
    {
        let key = key
            .or_else(|| {
                settings
                    .auth
                    .admin_api_key
                    .as_ref()
                    .map(|k| k.expose().to_string())
            })
            .unwrap_or_default();
        let opts = client::Options {
            url,
            key,
            category,
            jobs,
            batch_files,
            batch_bytes,
            retries,
            dry_run,
            failed_list,
            backoff: std::time::Duration::from_millis(500),
            timeout: std::time::Duration::from_secs(timeout.max(1)),
            max_file_bytes,
        };
        return upload(opts, paths, from);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Bounded: blocking threads only ever wait on the pool, which has `pool_max_size`
        // connections; more threads would only queue up in front of it.
        .max_blocking_threads(64)
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(settings).await,
            Command::Migrate => migrate(settings).await,
            Command::Reconcile {
                delete_orphans,
                grace_hours,
            } => reconcile(settings, delete_orphans, grace_hours).await,
            Command::Variants {
                action: VariantsAction::Backfill,
            } => backfill(settings).await,
            Command::Upload { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let app = App::build(settings).await?;
    app.run_until_stopped(shutdown_signal()).await?;
    tracing::info!("server stopped");
    Ok(())
}

async fn migrate(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let db = open_db(&settings)?;
    let applied = db.migrate_now().await?;
    if applied.is_empty() {
        tracing::info!(database = %db.target(), "database is up to date");
    } else {
        tracing::info!(database = %db.target(), migrations = ?applied, "applied migrations");
    }
    Ok(())
}

async fn reconcile(
    settings: Settings,
    delete_orphans: bool,
    grace_hours: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let db = open_db(&settings)?;
    if !db.probe().await {
        return Err(format!("cannot reach the database at {}", db.target()).into());
    }
    let store: std::sync::Arc<dyn portfolio_server::storage::ObjectStore> =
        std::sync::Arc::from(portfolio_server::storage::from_settings(&settings.storage));
    let opts = portfolio_server::reconcile::Options {
        delete_orphans,
        grace: std::time::Duration::from_secs(grace_hours * 3600),
    };
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    portfolio_server::reconcile::run(&db, store, opts, &mut out, &mut err).await?;
    Ok(())
}

/// `portfolio-server upload`: blocking HTTP on this thread; the exit code says whether
/// everything was sent.
fn upload(
    opts: client::Options,
    paths: Vec<std::path::PathBuf>,
    from: Option<std::path::PathBuf>,
) -> ExitCode {
    use std::io::IsTerminal;
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    if opts.key.is_empty() && !opts.dry_run {
        return fail(&"no admin key: pass --key or set ADMIN_API_KEY (in the environment or .env)");
    }
    let mut walked = match client::walk(&paths) {
        Ok(found) => found,
        Err(e) => return fail(&e),
    };
    if let Some(list) = &from {
        match client::read_list(list) {
            Ok(more) => walked.files.extend(more),
            Err(e) => return fail(&e),
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc_handler(move || stop.store(true, std::sync::atomic::Ordering::SeqCst));
    }
    let progress = client::Console::new(std::io::stderr().is_terminal());
    let summary = match client::run(&opts, walked, &progress, &stop) {
        Ok(s) => s,
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
    match client::write_failed_list(&opts.failed_list, &summary) {
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

/// Ctrl-C (SIGINT) calls `on_stop` once instead of killing the process.
fn ctrlc_handler(on_stop: impl Fn() + Send + 'static) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping: waiting for the requests in flight (Ctrl-C again to quit)");
                on_stop();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    });
    Ok(())
}

async fn backfill(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::IsTerminal;
    let db = open_db(&settings)?;
    if !db.probe().await {
        return Err(format!("cannot reach the database at {}", db.target()).into());
    }
    let store: std::sync::Arc<dyn portfolio_server::storage::ObjectStore> =
        std::sync::Arc::from(portfolio_server::storage::from_settings(&settings.storage));
    let mut progress = backfill::Console::new(std::io::stderr().is_terminal());
    let report = backfill::run(
        &db,
        store,
        &settings.image,
        settings.upload.max_side_px,
        &mut progress,
        &mut std::io::stdout(),
    )
    .await?;
    eprintln!(
        "{} of {} photos now have their variants; {} failed{}.",
        report.made,
        report.total,
        report.failed.len(),
        if report.gone > 0 {
            format!(", {} were deleted meanwhile", report.gone)
        } else {
            String::new()
        }
    );
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} photos have no variants (listed on stdout as `failed`); fix them and run the              command again",
            report.failed.len()
        )
        .into())
    }
}

/// The configured database, for the subcommands that need one.
fn open_db(settings: &Settings) -> Result<Db, Box<dyn std::error::Error>> {
    let url = settings
        .database
        .url
        .as_ref()
        .ok_or("no database configured: set DATABASE_URL")?;
    Ok(Db::new(url.expose(), &settings.database)?)
}
