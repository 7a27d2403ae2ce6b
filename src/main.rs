use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portfolio_server::{
    app::{App, shutdown_signal},
    backfill,
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
