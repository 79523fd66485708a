//! The command line: `serve`, `migrate`, `keys …`, `scans …`.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::app::{self, Application, HINT_FLUSH_LIMIT};
use crate::config::{DEFAULT_DATABASE_URL, DatabaseArgs, ServeArgs};
use crate::demo;
use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::keys::{AccountGroupAccess, ApiKey, NewApiKey, Permission};
use crate::domain::scan::Actor;
use crate::domain::scan::{Scan, ScanStatus, UnknownStatus};
use crate::service::{ScanService, ServiceError};
use crate::store::{KeyToCreate, Store};
use crate::telemetry::{self, LogFormat};
use crate::watch;

#[derive(Parser, Debug)]
#[command(
    name = "signal-scans",
    version,
    about = "Cancels asynchronous signal scans over HTTP."
)]
pub struct Cli {
    /// Log format: human text or one JSON object per line (on stderr).
    #[arg(
        long,
        env = "LOG_FORMAT",
        global = true,
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run pending migrations, then serve the API until Ctrl-C or SIGTERM.
    Serve(ServeArgs),
    /// Exit 0 when the service on LISTEN_ADDR answers GET /healthz with 200 (for container
    /// health checks in images without curl).
    Healthcheck {
        #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
        listen_addr: std::net::SocketAddr,
    },
    /// Run pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Create, list and revoke API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Create scans (seeding and operations).
    Scans {
        #[command(subcommand)]
        command: ScansCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key and print its secret, once.
    Create(CreateKeyArgs),
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id; it stops working at once.
    Revoke {
        #[command(flatten)]
        database: DatabaseArgs,
        key_id: Uuid,
    },
}

#[derive(Args, Debug)]
pub struct CreateKeyArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// A name that tells operators whose key this is.
    #[arg(long)]
    name: String,
    /// A permission to grant: signals:read or signals:write (repeat for several; default both).
    #[arg(long = "permission")]
    permissions: Vec<Permission>,
    /// An account group the key may reach (repeat for several).
    #[arg(long = "account-group", conflicts_with = "all_account_groups")]
    account_groups: Vec<AccountGroupId>,
    /// Let the key reach every account group.
    #[arg(long)]
    all_account_groups: bool,
    /// Expire the key this many seconds from now.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
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
pub enum ScansCommand {
    /// Create a scan in the given status.
    Create {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        account_group: AccountGroupId,
        #[arg(long, default_value = "queued")]
        status: ScanStatus,
        #[arg(long)]
        json: bool,
    },
    /// Move a scan as a runner does (queued → running → completed | failed), guarded by the
    /// state machine; exits non-zero naming the current status when the move is not allowed.
    Transition {
        #[command(flatten)]
        database: DatabaseArgs,
        scan_id: ScanId,
        #[arg(long, value_parser = ["running", "completed", "failed"])]
        to: String,
        #[arg(long)]
        json: bool,
    },
    /// Print one JSON line per status change as it commits: from the database, or with
    /// --server from the service's change stream (API key in SIGNAL_SCANS_API_KEY).
    Watch {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Only changes of this account group (required with --server).
        #[arg(long)]
        account_group: Option<AccountGroupId>,
        /// Follow the service at this URL (e.g. http://127.0.0.1:8080) instead of the database:
        /// a runner then needs only the URL and a key with signals:read.
        #[arg(long, requires = "account_group")]
        server: Option<url::Url>,
    },
    /// Show a scan.
    Show {
        #[command(flatten)]
        database: DatabaseArgs,
        scan_id: ScanId,
        #[arg(long)]
        json: bool,
    },
}

/// Parses the command line, runs the command, and turns any failure into one line and exit 1.
pub async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            // One line naming the setting: clap's message up to its usage block, joined.
            let rendered = error.to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{}", message.join(" "));
            return ExitCode::from(2);
        }
    };
    if let Err(message) = telemetry::init(cli.log_format) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(database) => {
            migrated_store(&database).await?;
            println!("migrations are up to date");
            Ok(())
        }
        Command::Healthcheck { listen_addr } => healthcheck(listen_addr).await,
        Command::Keys { command } => keys(command).await,
        Command::Scans { command } => scans(command).await,
    }
}

async fn healthcheck(listen_addr: std::net::SocketAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A server bound to every interface is reached on loopback.
    let mut addr = listen_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), check).await {
        Ok(Ok(head)) if head.starts_with(b"HTTP/1.1 200") => Ok(()),
        Ok(Ok(head)) => Err(format!(
            "unhealthy: {} answered {}",
            addr,
            String::from_utf8_lossy(&head)
        )),
        Ok(Err(error)) => Err(format!("unhealthy: cannot reach {addr}: {error}")),
        Err(_) => Err(format!("unhealthy: {addr} did not answer within 3 s")),
    }
}

/// Connects and brings the schema up to date; every command needs both.
async fn migrated_store(database: &DatabaseArgs) -> Result<Store, String> {
    app::migrated_store(&database.store_options())
        .await
        .map_err(|e| e.to_string())
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    if args.database.is_default() {
        tracing::info!(
            database = DEFAULT_DATABASE_URL,
            "DATABASE_URL is not set: using the embedded SQLite store; for production set \
             DATABASE_URL=postgres://user:password@host:5432/signal_scans"
        );
    }
    let application = Application::build(args.settings())
        .await
        .map_err(|e| e.to_string())?;
    let demo = match args.demo {
        true => {
            let seeded = demo::seed(&application.state().store)
                .await
                .map_err(|e| e.to_string())?;
            if seeded.is_none() {
                tracing::info!("--demo: the database already holds data; nothing was added");
            }
            seeded
        }
        false => None,
    };
    let addr = application.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        listen.addr = %addr,
        database = %args.database.url(),
        "signal-scans is serving"
    );
    if let Some(demo) = demo {
        println!("{}", demo.instructions(addr));
    }
    application
        .run_until(app::shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

/// A key as `keys create --json` and `keys list --json` print it (never with its secret, but for
/// the one answer of `create`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyView<'a> {
    id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    name: &'a str,
    permissions: Vec<&'static str>,
    /// Empty when `allAccountGroups` is true.
    account_groups: Vec<&'a str>,
    all_account_groups: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    created_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    revoked_at: Option<OffsetDateTime>,
    /// Where `keys create --output-file` wrote the secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    key_file: Option<String>,
}

impl<'a> KeyView<'a> {
    fn of(key: &'a ApiKey, secret: Option<&'a str>) -> Self {
        let (account_groups, all_account_groups) = match &key.access {
            AccountGroupAccess::All => (Vec::new(), true),
            AccountGroupAccess::Only(groups) => {
                (groups.iter().map(|g| g.as_str()).collect(), false)
            }
        };
        Self {
            id: key.id,
            key: secret,
            name: &key.name,
            permissions: key.permissions.iter().map(|p| p.as_str()).collect(),
            account_groups,
            all_account_groups,
            created_at: Some(key.created_at),
            expires_at: key.expires_at,
            revoked_at: key.revoked_at,
            key_file: None,
        }
    }

    fn groups_text(&self) -> String {
        if self.all_account_groups {
            "all".into()
        } else {
            self.account_groups.join(",")
        }
    }
}

fn rfc3339(at: Option<OffsetDateTime>) -> String {
    at.and_then(|at| {
        at.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_else(|| "-".into())
}

fn print_json(value: &impl Serialize) -> Result<(), String> {
    let text = serde_json::to_string(value).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

async fn keys(command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::Create(args) => create_key(args).await,
        KeysCommand::List { database, json } => {
            let store = migrated_store(&database).await?;
            let keys = store.list_keys().await.map_err(|e| e.to_string())?;
            let views: Vec<KeyView> = keys.iter().map(|k| KeyView::of(k, None)).collect();
            if json {
                return print_json(&views);
            }
            println!(
                "{:<36}  {:<24}  {:<27}  {:<10}  EXPIRES / REVOKED",
                "ID", "NAME", "PERMISSIONS", "GROUPS"
            );
            for view in &views {
                println!(
                    "{:<36}  {:<24}  {:<27}  {:<10}  {} / {}",
                    view.id,
                    view.name,
                    view.permissions.join(","),
                    view.groups_text(),
                    rfc3339(view.expires_at),
                    rfc3339(view.revoked_at),
                );
            }
            Ok(())
        }
        KeysCommand::Revoke { database, key_id } => {
            let store = migrated_store(&database).await?;
            match store.revoke_key(key_id).await.map_err(|e| e.to_string())? {
                Some(key) => {
                    println!(
                        "revoked key {} ({}) at {}",
                        key.id,
                        key.name,
                        rfc3339(key.revoked_at)
                    );
                    Ok(())
                }
                None => Err(format!("no API key with id {key_id}")),
            }
        }
    }
}

async fn create_key(args: CreateKeyArgs) -> Result<(), String> {
    let name = args.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err("--name must be 1 to 200 characters".into());
    }
    let access = match (args.all_account_groups, args.account_groups.is_empty()) {
        (true, _) => AccountGroupAccess::All,
        (false, false) => AccountGroupAccess::Only(args.account_groups.clone()),
        (false, true) => {
            return Err("give --account-group ID (repeatable) or --all-account-groups".into());
        }
    };
    let mut permissions = match args.permissions.is_empty() {
        true => vec![Permission::SignalsRead, Permission::SignalsWrite],
        false => args.permissions.clone(),
    };
    permissions.sort();
    permissions.dedup();
    let store = migrated_store(&args.database).await?;
    if args.if_none {
        let now = OffsetDateTime::now_utc();
        let keys = store.list_keys().await.map_err(|e| e.to_string())?;
        if let Some(active) = keys.iter().find(|key| key.authenticate(now).is_ok()) {
            if args.json {
                return print_json(
                    &serde_json::json!({ "created": false, "activeKeyId": active.id }),
                );
            }
            println!(
                "an active API key exists ({} ({})); none created (--if-none)",
                active.id, active.name
            );
            return Ok(());
        }
    }
    // The file is made before the key, so a path that cannot be written leaves no key behind.
    let mut secret_file = match &args.output_file {
        Some(path) => Some(SecretFile::create_new(path)?),
        None => None,
    };
    let new_key = NewApiKey::generate();
    let created = store
        .create_key(&KeyToCreate {
            name: name.to_owned(),
            hash: new_key.hash,
            permissions,
            access,
            expires_at: args
                .expires_in
                .map(|secs| OffsetDateTime::now_utc() + time::Duration::seconds(secs.into())),
        })
        .await
        .map_err(|e| e.to_string());
    let key = match created {
        Ok(key) => key,
        Err(error) => {
            if let Some(file) = secret_file.take() {
                file.discard();
            }
            return Err(error);
        }
    };
    let mut view = KeyView::of(&key, Some(&new_key.secret));
    if let Some(file) = secret_file {
        let path = file.path.display().to_string();
        file.write(&new_key.secret).map_err(|e| {
            format!(
                "created API key {} but could not write {path}: {e}; revoke it with `keys revoke {}`",
                key.id, key.id
            )
        })?;
        view.key = None;
        view.key_file = Some(path);
    }
    if args.json {
        return print_json(&view);
    }
    println!("created API key {} ({})", view.id, view.name);
    println!("  permissions:    {}", view.permissions.join(", "));
    println!("  account groups: {}", view.groups_text());
    println!("  expires:        {}", rfc3339(view.expires_at));
    match &view.key_file {
        Some(path) => {
            println!("the key is in {path} (mode 0600); read it once, then delete the file")
        }
        None => {
            println!("the key, shown this once; store it now:");
            println!("{}", new_key.secret);
        }
    }
    Ok(())
}

/// A file made for one secret: new (never an existing one), readable by its owner only.
struct SecretFile {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl SecretFile {
    fn create_new(path: &std::path::Path) -> Result<Self, String> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "--output-file {} already exists; refusing to overwrite it (no key was created)",
                path.display()
            ),
            _ => format!(
                "cannot create --output-file {}: {e} (no key was created)",
                path.display()
            ),
        })?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    fn write(mut self, secret: &str) -> std::io::Result<()> {
        use std::io::Write;
        self.file.write_all(secret.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.file.sync_all()
    }

    /// Removes the file after the key could not be created.
    fn discard(self) {
        drop(self.file);
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScanView<'a> {
    scan_id: &'a str,
    status: ScanStatus,
}

impl<'a> From<&'a Scan> for ScanView<'a> {
    fn from(scan: &'a Scan) -> Self {
        Self {
            scan_id: scan.id.as_str(),
            status: scan.status,
        }
    }
}

async fn scans(command: ScansCommand) -> Result<(), String> {
    match command {
        ScansCommand::Create {
            database,
            account_group,
            status,
            json,
        } => {
            let store = migrated_store(&database).await?;
            let scan = store
                .create_scan(&account_group, status)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                return print_json(&ScanView::from(&scan));
            }
            println!("{} {}", scan.id, scan.status);
            Ok(())
        }
        ScansCommand::Transition {
            database,
            scan_id,
            to,
            json,
        } => {
            let to: ScanStatus = to.parse().map_err(|e: UnknownStatus| e.to_string())?;
            let store = migrated_store(&database).await?;
            let service = ScanService::new(store.clone());
            let actor = Actor {
                api_key_id: None,
                trace_id: None,
            };
            let outcome = service.advance(&scan_id, to, actor).await;
            // Tell listeners now rather than leave them to find the change at their next poll.
            store.flush_hints(HINT_FLUSH_LIMIT).await;
            match outcome {
                Ok(scan) if json => print_json(&scan),
                Ok(scan) => {
                    println!("{} {}", scan.id, scan.status);
                    Ok(())
                }
                Err(ServiceError::InvalidTransition { current, requested }) => Err(format!(
                    "scan {scan_id} is {current}; it cannot move to {requested}"
                )),
                Err(ServiceError::ScanNotFound) => Err(format!("no scan with id {scan_id}")),
                Err(other) => Err(other.to_string()),
            }
        }
        ScansCommand::Show {
            database,
            scan_id,
            json,
        } => {
            let store = migrated_store(&database).await?;
            let scan = store
                .find_scan(None, &scan_id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no scan with id {scan_id}"))?;
            if json {
                return print_json(&scan);
            }
            println!("scan          {}", scan.id);
            println!("account group {}", scan.account_group_id);
            println!("status        {}", scan.status);
            for (label, at) in [
                ("created", Some(scan.created_at)),
                ("updated", Some(scan.updated_at)),
                ("started", scan.started_at),
                ("finished", scan.finished_at),
                ("cancelled", scan.cancelled_at),
            ] {
                println!("{label:<13} {}", rfc3339(at));
            }
            Ok(())
        }
        ScansCommand::Watch {
            server: Some(server),
            account_group: Some(group),
            ..
        } => {
            // From the environment only: a flag would show the key in `ps`.
            let key = std::env::var("SIGNAL_SCANS_API_KEY").map_err(|_| {
                "scans watch --server needs the API key in SIGNAL_SCANS_API_KEY".to_owned()
            })?;
            watch::follow_server(&server, &group, &key).await
        }
        ScansCommand::Watch {
            database,
            account_group,
            ..
        } => {
            let store = migrated_store(&database).await?;
            watch::run(store, account_group, database.feed_poll())
                .await
                .map_err(|e| e.to_string())
        }
    }
}
