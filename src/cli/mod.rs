//! The command line: `main` parses [`Cli`] and calls [`run`], which loads the settings, starts
//! logging and one runtime, and hands over to the subcommand's file. Each subcommand's file turns
//! its arguments into a use case's options and the outcome into output and an exit code; the use
//! cases themselves live in `write/` (reconcile, backfill) and `app` (serve).

mod backfill;
mod healthcheck;
mod reconcile;
pub mod upload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{
    app::{App, shutdown_signal},
    config::{LogFormat, Settings},
    db::Db,
    telemetry,
};

/// The photo-portfolio API server.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Asks the server on this machine (`PORT`) for a probe: exit 0 on 200, else 1. For a
    /// container's HEALTHCHECK, where the image has no curl.
    Healthcheck {
        /// The probe: `/livez` (the process answers) or `/readyz` (it can serve listings).
        #[arg(long, default_value = "/livez")]
        path: String,
    },
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
pub enum VariantsAction {
    /// Make them for every row that has none yet (rows from before this version, or from the
    /// original server). Resumable, idempotent, and safe while the server runs.
    Backfill,
}

/// Runs the parsed command line; the exit code says how it went.
pub fn run(cli: Cli) -> ExitCode {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            telemetry::init(LogFormat::Text);
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log.format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Bounded: blocking threads only ever wait on the pool, which has `pool_max_size`
        // connections; more threads would only queue up in front of it.
        .max_blocking_threads(64)
        .build()
        .expect("tokio runtime");
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Upload { .. } = command {
        return runtime.block_on(upload::command(command, &settings));
    }
    if let Command::Healthcheck { path } = &command {
        return healthcheck::command(&settings, path);
    }
    let result = runtime.block_on(async move {
        match command {
            Command::Serve => serve(settings).await,
            Command::Migrate => migrate(settings).await,
            Command::Reconcile {
                delete_orphans,
                grace_hours,
            } => reconcile::command(settings, delete_orphans, grace_hours).await,
            Command::Variants {
                action: VariantsAction::Backfill,
            } => backfill::command(settings).await,
            Command::Upload { .. } | Command::Healthcheck { .. } => {
                unreachable!("handled above")
            }
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

/// The configured database, for the subcommands that need one.
fn open_db(settings: &Settings) -> Result<Db, Box<dyn std::error::Error>> {
    let url = settings
        .database
        .url
        .as_ref()
        .ok_or("no database configured: set DATABASE_URL")?;
    Ok(Db::new(url.expose(), &settings.database)?)
}
