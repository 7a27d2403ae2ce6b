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
    Upload(upload::UploadArgs),
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
    for unknown in crate::config::unknown_settings(std::path::Path::new(".")) {
        tracing::warn!("{unknown}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Bounded: blocking threads only ever wait on the pool, which has `pool_max_size`
        // connections; more threads would only queue up in front of it.
        .max_blocking_threads(64)
        .build()
        .expect("tokio runtime");
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => exit(runtime.block_on(serve(settings))),
        Command::Migrate => exit(runtime.block_on(migrate(settings))),
        Command::Reconcile {
            delete_orphans,
            grace_hours,
        } => exit(runtime.block_on(reconcile::command(settings, delete_orphans, grace_hours))),
        Command::Variants {
            action: VariantsAction::Backfill,
        } => exit(runtime.block_on(backfill::command(settings))),
        // These two say themselves how it went.
        Command::Upload(args) => runtime.block_on(upload::command(args, &settings)),
        Command::Healthcheck { path } => healthcheck::command(&settings, &path),
    }
}

/// The exit code of a subcommand that ends in an error or nothing: the error is logged.
fn exit(result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    crate::blocking::map_large_buffers_on_their_own();
    // Caught from here on: a SIGTERM while starting stops the server as soon as it is up.
    let stop = shutdown_signal();
    let app = App::build(settings).await?;
    app.run_until_stopped(stop).await?;
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
