//! The command line: its clap types (every flag and subcommand), the dispatch of each command to
//! its file, `serve` and `migrate`, and the one line an error is printed as.

// First: its `out!` serves the modules below.
#[macro_use]
mod output;
pub mod config;
mod demo;
mod healthcheck;
mod keys;
mod remote;
mod scans;
mod watch;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use tokio::sync::Notify;
use uuid::Uuid;

use self::config::{DEFAULT_DATABASE_URL, DatabaseArgs, HealthcheckArgs, LogArgs, ServeArgs};
use crate::app::{self, Application, StartupError};
use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::keys::Permission;
use crate::domain::scan::{IdempotencyKey, ScanStatus};
use crate::service::{KeyAdmin, ServiceError};
use crate::store::{Store, StoreError};
use crate::telemetry::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "signal-scans",
    version,
    about = "Cancels asynchronous signal scans over HTTP.",
    // A missing command is a usage error like another (one line naming what to give, exit 2),
    // not the whole help, which `parse` would cut to its first line: the description alone.
    arg_required_else_help = false
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run pending migrations, then serve the API until Ctrl-C or SIGTERM.
    Serve(ServeArgs),
    /// Exit 0 when the service on LISTEN_ADDR answers GET /healthz with 200 (for container
    /// health checks in images without curl).
    Healthcheck(HealthcheckArgs),
    /// Run pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Create, list and revoke API keys.
    #[command(arg_required_else_help = false)]
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Start, move, show and watch scans: in the database, or with --server through the API.
    #[command(arg_required_else_help = false)]
    Scans {
        #[command(subcommand)]
        command: ScansCommand,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum KeysCommand {
    /// Create a key and print its secret, once.
    Create(CreateKeyArgs),
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id; its requests are refused within KEY_CACHE_TTL_MS (1 s) on every serving
    /// instance, and its open change streams end within STREAM_KEEPALIVE_MS (15 s) more.
    Revoke {
        #[command(flatten)]
        database: DatabaseArgs,
        key_id: Uuid,
    },
}

#[derive(Args, Debug)]
pub(crate) struct CreateKeyArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// A name that tells operators whose key this is: 1 to 200 characters, no control characters.
    #[arg(long)]
    name: String,
    /// A permission to grant: signals:read, signals:write or signals:run (a runner's moves);
    /// repeat for several; default read and write.
    #[arg(long = "permission")]
    permissions: Vec<Permission>,
    /// An account group the key may reach (repeat for several).
    #[arg(long = "account-group", conflicts_with = "all_account_groups")]
    account_groups: Vec<AccountGroupId>,
    /// Let the key reach every account group.
    #[arg(long)]
    all_account_groups: bool,
    /// Expire the key this many seconds from now.
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
    expires_in: Option<u32>,
    /// Create the key only when no active (unrevoked, unexpired) key exists; otherwise say so
    /// and exit 0. For bootstrap jobs that run on every start.
    #[arg(long)]
    if_none: bool,
    /// Write the secret to this new file (mode 0600; an existing file is never overwritten)
    /// instead of printing it; only the key's id and the path are printed.
    #[arg(long, value_name = "PATH")]
    output_file: Option<std::path::PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ScansCommand {
    /// Create a scan: in the database in any status, or with --server through the API (queued;
    /// API key with signals:write in SIGNAL_SCANS_API_KEY).
    Create {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        account_group: AccountGroupId,
        /// queued, running, completed, failed or cancelled.
        #[arg(long, default_value = "queued", conflicts_with = "server")]
        status: ScanStatus,
        /// Create the scan through the service at this URL (e.g. http://127.0.0.1:8080).
        #[arg(long, value_parser = remote::ServerUrlParser)]
        server: Option<url::Url>,
        /// With --server: sent as the Idempotency-Key header, so that the same command run again
        /// (after exit 75, say) answers the scan the first one created instead of a second one.
        #[arg(long, requires = "server", value_parser = remote::idempotency_key)]
        idempotency_key: Option<IdempotencyKey>,
        #[arg(long)]
        json: bool,
    },
    /// Move a scan as a runner does (queued → running → completed | failed), guarded by the
    /// state machine; exits 1 naming the current status when the move is not allowed (75: see
    /// README, ask again later).
    /// With --server, through the API (API key with signals:run in SIGNAL_SCANS_API_KEY).
    Transition {
        #[command(flatten)]
        database: DatabaseArgs,
        scan_id: ScanId,
        #[arg(long, value_parser = ["running", "completed", "failed"])]
        to: String,
        /// Why the scan failed (with --to failed), at most 1,000 characters.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        through: ThroughServer,
        #[arg(long)]
        json: bool,
    },
    /// Print one JSON line per status change as it commits, each with its cursor (`id`): from
    /// the database, or with --server from the service's change stream (API key in
    /// SIGNAL_SCANS_API_KEY).
    Watch {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Only changes of this account group (required with --server).
        #[arg(long)]
        account_group: Option<AccountGroupId>,
        /// Follow the service at this URL (e.g. http://127.0.0.1:8080) instead of the database:
        /// a runner then needs only the URL and a key with signals:read.
        #[arg(long, requires = "account_group", value_parser = remote::ServerUrlParser)]
        server: Option<url::Url>,
        /// Resume right after this cursor (the `id` of the last line a watch printed) instead of
        /// from now.
        // Not empty: the service takes an empty Last-Event-ID as none, and followed from now.
        #[arg(long, value_name = "CURSOR", value_parser = clap::builder::NonEmptyStringValueParser::new())]
        after: Option<String>,
    },
    /// Show a scan: from the database, or with --server through the API (API key with
    /// signals:read in SIGNAL_SCANS_API_KEY).
    Show {
        #[command(flatten)]
        database: DatabaseArgs,
        scan_id: ScanId,
        #[command(flatten)]
        through: ThroughServer,
        #[arg(long)]
        json: bool,
    },
}

/// A command on one scan through the service (`--server`, with the scan's account group)
/// instead of the database.
#[derive(Args, Debug)]
pub(crate) struct ThroughServer {
    /// Go through the service at this URL (e.g. http://127.0.0.1:8080) instead of the database.
    #[arg(long, requires = "account_group", value_parser = remote::ServerUrlParser)]
    server: Option<url::Url>,
    /// The scan's account group (required with --server): a scan of another group is not found.
    #[arg(long)]
    account_group: Option<AccountGroupId>,
}

/// The binary's entry point: the command line, then Tokio's runtime for its command. Here rather
/// than in `main.rs`, so the program is compiled once, in this crate: with an async `main` in the
/// binary, every future it awaits was compiled a second time there (37 s of a clean release
/// build; now 1).
pub fn main() -> ExitCode {
    owners_files_alone();
    file_size_limit_fails_the_write();
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let runtime = match runtime(&cli.command) {
        Ok(runtime) => runtime,
        Err(message) => {
            report_failure(cli.log.log_format, &message);
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run_command(cli))
}

/// Whatever the process creates is its user's alone (umask `077`, as PostgreSQL's server sets):
/// the SQLite database holds every tenant's scans and audit trail, and its folder, its file and
/// the `-wal` and `-shm` beside it were readable by every local user (`0755`, `0644` under the
/// usual umask: the security review). A file that exists keeps its mode (SQLite gives its `-wal`
/// and `-shm` the file's).
fn owners_files_alone() {
    // SAFETY: umask(2) cannot fail and touches no memory; it is set before any thread starts.
    unsafe {
        libc::umask(0o077);
    }
}

/// A write past the process's file-size limit (`ulimit -f`, systemd's `LimitFSIZE`) fails, as
/// SQLite's `disk I/O error` (a 500, the process serving on), instead of killing the process with
/// SIGXFSZ, which logged nothing and left a restart loop to explain (the Troubleshoot review).
/// PostgreSQL's server ignores it too.
fn file_size_limit_fails_the_write() {
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory and needs no handler;
    // it is done before any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// `healthcheck` runs on this thread alone: it is one request, and a container's process limit
/// counts its threads (with a worker per CPU it failed to start on a host of many CPUs, and the
/// container went unhealthy). Every other command has a worker per CPU, or
/// `TOKIO_WORKER_THREADS`.
fn runtime(command: &Command) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = match command {
        Command::Healthcheck(_) => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(threads) = config::worker_threads()? {
                builder.worker_threads(threads);
            }
            builder
        }
    };
    builder
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))
}

/// The command line, or the exit code of having printed help, the version or a usage error.
fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(error) if !error.use_stderr() => {
            // --help and --version
            let _ = error.print();
            Err(ExitCode::SUCCESS)
        }
        Err(error) => {
            // One line naming the setting: clap's message up to its usage block (or its hint
            // of --help), joined; a value quoted in it may hold a blank line of its own.
            let rendered = error.to_string();
            let end = ["\n\nUsage:", "\n\nFor more information"]
                .iter()
                .filter_map(|block| rendered.find(block))
                .min()
                .unwrap_or(rendered.len());
            let message: Vec<&str> = rendered[..end]
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect();
            let message = message.join(" ");
            match config::log_format_before_parsing() {
                LogFormat::Json => {
                    let message = message.strip_prefix("error: ").unwrap_or(&message);
                    report_failure(LogFormat::Json, message)
                }
                // clap's own words, which already start with "error: ".
                LogFormat::Text => eprintln!("{message}"),
            }
            Err(ExitCode::from(2))
        }
    }
}

/// A command's last word when it fails, one line on stderr: `error: …`, or under
/// `LOG_FORMAT=json` a JSON log line at level ERROR, so that a collector that reads JSON keeps the
/// one line that says why the service stopped. The subscriber may not be installed yet (a setting
/// clap refused): it is then, for this line.
fn report_failure(format: LogFormat, message: &str) {
    if format == LogFormat::Json {
        let _ = telemetry::init(format, "error");
        if tracing::enabled!(tracing::Level::ERROR) {
            tracing::error!(error = message, "the command failed");
            return;
        }
    }
    eprintln!("error: {message}");
}

/// Runs the command, and turns any failure into one line and exit 1 (75 where the service asked
/// to be asked again later, or did not answer: see [`remote::TryLater`]; and where the database
/// did not: see [`try_later`]).
async fn run_command(cli: Cli) -> ExitCode {
    if let Err(message) = telemetry::init(cli.log.log_format, &config::log_filter()) {
        // A bad `RUST_LOG`: under `LOG_FORMAT=json` a JSON line too, as every other failure.
        report_failure(cli.log.log_format, &message);
        return ExitCode::from(2);
    }
    let ran = run(cli.command).await;
    close_opened_stores().await;
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}`: the error and its causes, joined by ": ", on one line.
            report_failure(cli.log.log_format, &format!("{error:#}"));
            if bad_setting(&error) {
                ExitCode::from(2)
            } else if try_later(&error) {
                ExitCode::from(remote::TryLater::EXIT_CODE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// An argument or setting a command refused itself, past what clap judges (a key's name, a
/// failure's reason, a cursor, the API key): exit 2, as for clap's refusals.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadInput(pub String);

/// Whether a setting's value was refused once the command ran (a URL the command line could not
/// judge, or what [`BadInput`] says): exit 2, as for the settings it refuses itself, so a
/// supervisor does not restart a process for what only an operator can fix.
fn bad_setting(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<BadInput>()
            || matches!(
                cause.downcast_ref::<StartupError>(),
                Some(StartupError::Settings(_) | StartupError::Store(StoreError::Setting(_)))
            )
            || matches!(
                cause.downcast_ref::<StoreError>(),
                Some(StoreError::Setting(_))
            )
    })
}

/// Whether asking again later may succeed: the service did not answer, or asked to be asked
/// later ([`remote::TryLater`]); or the database was unavailable, what the API answers 502 for
/// (unreachable, too slow, out of connections, its disk full, its lock held). A command on the
/// database so exits as the same command through `--server` does, and a script retries both.
fn try_later(error: &anyhow::Error) -> bool {
    // `TryLater` is also a context (`with_context`), which only `downcast_ref` finds: the chain
    // yields a context as the text it says.
    error.downcast_ref::<remote::TryLater>().is_some()
        || error.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<StoreError>(),
                Some(StoreError::Unavailable(_))
            ) || matches!(
                cause.downcast_ref::<ServiceError>(),
                Some(ServiceError::Store(StoreError::Unavailable(_)))
            )
        })
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(database) => {
            migrated_store(&database).await?;
            out!("migrated: every migration this binary holds has run");
            Ok(())
        }
        Command::Healthcheck(args) => healthcheck::check(args.listen_addr).await,
        Command::Keys { command } => match command {
            KeysCommand::Create(args) => keys::create(args).await,
            KeysCommand::List { database, json } => keys::list(&database, json).await,
            KeysCommand::Revoke { database, key_id } => keys::revoke(&database, key_id).await,
        },
        Command::Scans { command } => match command {
            ScansCommand::Create {
                database,
                account_group,
                status,
                server,
                idempotency_key,
                json,
            } => {
                let once = idempotency_key.as_ref().map(IdempotencyKey::as_str);
                scans::create(
                    &database,
                    server.as_ref(),
                    &account_group,
                    status,
                    once,
                    json,
                )
                .await
            }
            ScansCommand::Transition {
                database,
                scan_id,
                to,
                reason,
                through,
                json,
            } => {
                let request = scans::Move {
                    scan_id: &scan_id,
                    to: to.parse()?,
                    reason: reason.as_deref(),
                    json,
                };
                let group = through.account_group.as_ref();
                scans::transition(&database, through.server.as_ref(), group, request).await
            }
            ScansCommand::Show {
                database,
                scan_id,
                through,
                json,
            } => {
                let (server, group) = (through.server.as_ref(), through.account_group.as_ref());
                scans::show(&database, &scan_id, server, group, json).await
            }
            ScansCommand::Watch {
                database,
                server,
                account_group,
                after,
            } => {
                // A watch follows until it is stopped: Ctrl-C or SIGTERM end it with exit 0, also
                // as a container's PID 1, which has no default action for SIGTERM.
                let stop = app::stop_signal();
                let watching = async {
                    match (server, account_group) {
                        (Some(server), Some(group)) => {
                            watch::follow_server(&server, &group, after).await
                        }
                        (_, group) => {
                            watch::follow_database(&database, group, after.as_deref()).await
                        }
                    }
                };
                tokio::select! {
                    watched = watching => watched,
                    () = stop => {
                        tracing::info!("stopped");
                        Ok(())
                    }
                }
            }
        },
    }
}

/// Connects and brings the schema up to date; every command that touches the database needs both.
/// Commands hand the store to the service they use, and never query it themselves.
async fn migrated_store(database: &DatabaseArgs) -> anyhow::Result<Store> {
    let store = app::migrated_store(&database.store_options()).await?;
    opened_stores().push(store.clone());
    Ok(store)
}

/// The stores the command opened, closed as it ends ([`close_opened_stores`]). Held here rather
/// than by each command, which drops its store at any `?`.
fn opened_stores() -> std::sync::MutexGuard<'static, Vec<Store>> {
    static OPENED: std::sync::Mutex<Vec<Store>> = std::sync::Mutex::new(Vec::new());
    OPENED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Closes the stores the command opened. A SQLite file's last connection closed checkpoints its
/// write-ahead log into the file and removes it; dropped at the process's end, the connections
/// left the command's changes in `-wal` alone, which README's Troubleshoot says may be deleted
/// once no process has the file open.
async fn close_opened_stores() {
    let opened = std::mem::take(&mut *opened_stores());
    for store in opened {
        store.close(STORE_CLOSE_LIMIT).await;
    }
}

/// The store of a command that reads or moves what is already there: an embedded store that does
/// not exist is an error naming where it was looked for, never a new empty one (a runner that
/// forgot DATABASE_URL must not get a fresh database in its working folder).
async fn existing_store(database: &DatabaseArgs, or_else: Option<&str>) -> anyhow::Result<Store> {
    if let Some(file) = database.sqlite_file()
        && !file.exists()
    {
        let source = match database.is_default() {
            true => "DATABASE_URL is not set, so the embedded default",
            false => "DATABASE_URL",
        };
        bail!(
            "no database at {} ({source}); set DATABASE_URL to the service's database{}",
            file.display(),
            or_else
                .map(|other| format!(", or {other}"))
                .unwrap_or_default()
        );
    }
    migrated_store(database).await
}

/// The store of a command that writes: one this process can never write (a read-only file or
/// folder, a SQLite URL with `mode=ro`) is refused as `serve` refuses it, exit 1; the first write
/// was told "attempt to write a readonly database", exit 75, as a volume remounted read-only for a
/// while is, and a supervisor retried a setting that can never work.
async fn writable(store: Store) -> anyhow::Result<Store> {
    store.check_writable().await?;
    Ok(store)
}

/// What a scans command can do without the database.
const OR_SERVER: Option<&str> = Some("use --server with the service's URL");

/// What a key command can do without the database: nothing (keys live in it).
const NO_OTHER_WAY: Option<&str> = None;

/// The longest a stopping `serve` waits for its database connections to close (a connection is
/// in use only while a request that outlived the drain still runs).
const STORE_CLOSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Raises the process's open-file limit to its hard limit: each client connection is a file
/// descriptor, and the soft limit many hosts start a process with (1,024: systemd's, recent
/// Docker's) would stop accepting connections long before `MAX_CONNECTIONS`. Warns when even the
/// hard limit leaves too few for the settings.
fn raise_open_file_limit(args: &ServeArgs) {
    // Descriptors that are no client's connection: the listener, the runtime's, the database's
    // files and the connections outside its pool, Redis's.
    const ROOM: u64 = 64;
    let wanted =
        u64::from(args.max_connections) + u64::from(args.database.db_max_connections) + ROOM;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < wanted => tracing::warn!(
            open_file_limit = limit,
            max_connections = args.max_connections,
            db_max_connections = args.database.db_max_connections,
            "the open-file limit is below MAX_CONNECTIONS + DB_MAX_CONNECTIONS + 64, and this \
             process cannot raise it further: past it, connections wait unaccepted (the log says \
             `cannot accept a connection`); lower MAX_CONNECTIONS or raise the hard limit \
             (`ulimit -Hn`, systemd's LimitNOFILE, compose's ulimits)"
        ),
        Ok(limit) => tracing::debug!(open_file_limit = limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "cannot read or raise the open-file limit"),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.database.is_default() {
        tracing::info!(
            database = DEFAULT_DATABASE_URL,
            "DATABASE_URL is not set: using the embedded SQLite store; for production set \
             DATABASE_URL=postgres://user:password@host:5432/signal_scans"
        );
    }
    let database = &args.database;
    if database.sqlite_file().is_none() && database.db_write_batches > database.db_max_connections {
        tracing::warn!(
            db_write_batches = database.db_write_batches,
            db_max_connections = database.db_max_connections,
            "DB_WRITE_BATCHES is above DB_MAX_CONNECTIONS: at most DB_MAX_CONNECTIONS batches \
             commit at once"
        );
    }
    if !args.request_timeout_outlasts_a_write() {
        tracing::warn!(
            request_timeout_ms = args.request_timeout_ms,
            db_timeout_ms = args.database.db_timeout_ms,
            longest_writing_request_ms =
                u64::try_from(args.longest_writing_request().as_millis()).unwrap_or(u64::MAX),
            "REQUEST_TIMEOUT_MS is not above the longest a request that writes may take \
             (5 × DB_TIMEOUT_MS plus 2750, plus DB_TIMEOUT_MS − KEY_CACHE_TTL_MS while the key \
             cache is on and that is positive): a request it ends may answer 500 for a change \
             that then commits"
        );
    }
    raise_open_file_limit(&args);
    // Listening before the database is reached: a stop while connecting or migrating ends the
    // start, rather than waiting for it (or, as PID 1, being ignored).
    let mut signals = app::StopSignals::install();
    let application = tokio::select! {
        built = Application::build(args.settings()) => built?,
        () = signals.next() => {
            tracing::info!("stopped before serving");
            return Ok(());
        }
    };
    let demo = match args.demo {
        true => {
            let state = application.state();
            let seeded = demo::seed(&KeyAdmin::new(state.store.clone()), &state.scans).await?;
            if seeded.is_none() {
                tracing::info!(
                    database = %args.database.url(),
                    "--demo: the database already holds data; nothing was added (the demo's keys \
                     were printed when it was first seeded; delete the database file to start over)"
                );
            }
            seeded
        }
        false => None,
    };
    let addr = application.local_addr()?;
    tracing::info!(
        listen.addr = %addr,
        database = %args.database.url(),
        "signal-scans is serving"
    );
    // The demo's keys are in the text alone; a text that cannot be printed is said in the log,
    // and the service serves all the same.
    if let Some(demo) = demo
        && let Err(error) = output::try_write_line(format_args!("{}", demo.instructions(addr)))
    {
        tracing::warn!(%error, "cannot print the demo's instructions (its keys are in them)");
    }
    let store = application.state().store.clone();
    // The first Ctrl-C or SIGTERM drains; a second ends the drain at once (an operator who will
    // not wait, as with any long-running command).
    let (asked, hurried) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let listening = tokio::spawn({
        let (asked, hurried) = (Arc::clone(&asked), Arc::clone(&hurried));
        async move {
            signals.next().await;
            tracing::info!(
                "shutdown requested; finishing in-flight requests (asked again: stopping at once)"
            );
            asked.notify_one();
            signals.next().await;
            hurried.notify_one();
        }
    });
    application
        .run_until_hurried(async move { asked.notified().await }, async move {
            hurried.notified().await
        })
        .await;
    listening.abort();
    store.close(STORE_CLOSE_LIMIT).await;
    tracing::info!("stopped");
    Ok(())
}
