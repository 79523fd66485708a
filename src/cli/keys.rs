//! `keys create | list | revoke`: how keys are printed (`KeyView`), and the private file a new
//! key's secret may be written to (`SecretFile`).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::config::DatabaseArgs;
use super::output::{print_json, rfc3339, try_write_line};
use super::{BadInput, CreateKeyArgs, NO_OTHER_WAY, existing_store, migrated_store, writable};
use crate::domain::keys::{AccountGroupAccess, ApiKey, KeySpec, KeySpecError};
use crate::service::KeyAdmin;

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
    #[serde(with = "crate::domain::rfc3339::option")]
    created_at: Option<OffsetDateTime>,
    #[serde(with = "crate::domain::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    #[serde(with = "crate::domain::rfc3339::option")]
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

/// The keys of the database there is: listing or revoking keys of a database that does not
/// exist is an error, never a new empty one (a mistyped path answered "no keys").
async fn key_admin(database: &DatabaseArgs) -> anyhow::Result<KeyAdmin> {
    Ok(KeyAdmin::new(existing_store(database, NO_OTHER_WAY).await?))
}

pub(super) async fn list(database: &DatabaseArgs, json: bool) -> anyhow::Result<()> {
    let keys = key_admin(database).await?.list().await?;
    let views: Vec<KeyView> = keys.iter().map(|k| KeyView::of(k, None)).collect();
    if json {
        return print_json(&views);
    }
    let rows: Vec<[String; 5]> = views
        .iter()
        .map(|view| {
            [
                view.id.to_string(),
                view.name.to_owned(),
                view.permissions.join(","),
                view.groups_text(),
                format!(
                    "{} / {}",
                    rfc3339(view.expires_at),
                    rfc3339(view.revoked_at)
                ),
            ]
        })
        .collect();
    let header = ["ID", "NAME", "PERMISSIONS", "GROUPS", "EXPIRES / REVOKED"].map(String::from);
    // Each column as wide as its widest cell (names and group lists have no fixed width).
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out!("{}", cells.join("  ").trim_end());
    }
    Ok(())
}

pub(super) async fn revoke(database: &DatabaseArgs, key_id: Uuid) -> anyhow::Result<()> {
    let store = writable(existing_store(database, NO_OTHER_WAY).await?).await?;
    let key = KeyAdmin::new(store)
        .revoke(key_id)
        .await?
        .ok_or_else(|| anyhow!("no API key with id {key_id}"))?;
    out!(
        "revoked key {} ({}) at {}",
        key.id,
        key.name,
        rfc3339(key.revoked_at)
    );
    Ok(())
}

pub(super) async fn create(args: CreateKeyArgs) -> anyhow::Result<()> {
    let access = match args.all_account_groups {
        true => AccountGroupAccess::All,
        false => AccountGroupAccess::Only(args.account_groups),
    };
    let expires_in = args
        .expires_in
        .map(|secs| time::Duration::seconds(secs.into()));
    let spec = KeySpec::new(&args.name, &args.permissions, access, expires_in).map_err(
        |error| match error {
            KeySpecError::Name => BadInput(
                "--name must be 1 to 200 characters, none of them a control character".into(),
            ),
            KeySpecError::NoAccountGroup => {
                BadInput("give --account-group ID (repeatable) or --all-account-groups".into())
            }
        },
    )?;
    // A first key is made before the service has ever run: the database may be new.
    let store = migrated_store(&args.database).await?;
    let keys = KeyAdmin::new(store.clone());
    if args.if_none
        && let Some(active) = keys.active().await?
    {
        if args.json {
            return print_json(&serde_json::json!({ "created": false, "activeKeyId": active.id }));
        }
        out!(
            "an active API key exists ({} ({})); none created (--if-none)",
            active.id,
            active.name
        );
        return Ok(());
    }
    // Only now: `--if-none` finding a key writes nothing, so it runs on a read-only database too.
    writable(store).await?;
    // The file is made before the key, so a path that cannot be written leaves no key behind.
    let secret_file = args
        .output_file
        .as_deref()
        .map(SecretFile::create_new)
        .transpose()?;
    let (key, new_key) = match keys.create(&spec).await {
        Ok(created) => created,
        Err(error) => {
            if let Some(file) = secret_file {
                file.discard();
            }
            return Err(error.into());
        }
    };
    let mut view = KeyView::of(&key, Some(&new_key.secret));
    if let Some(file) = secret_file {
        let path = file.path.display().to_string();
        file.write(&new_key.secret).map_err(|e| {
            anyhow!(
                "created API key {} but could not write {path}: {e}; revoke it with `keys revoke {}`",
                key.id,
                key.id
            )
        })?;
        view.key = None;
        view.key_file = Some(path);
    }
    let text = match args.json {
        true => serde_json::to_string(&view)?,
        false => {
            let mut text = format!(
                "created API key {} ({})\n  permissions:    {}\n  account groups: {}\n  \
                 expires:        {}\n",
                view.id,
                view.name,
                view.permissions.join(", "),
                view.groups_text(),
                rfc3339(view.expires_at)
            );
            match &view.key_file {
                Some(path) => text.push_str(&format!(
                    "the key is in {path} (mode 0600); read it once, then delete the file"
                )),
                None => text.push_str(&format!(
                    "the key, shown this once; store it now:\n{}",
                    new_key.secret
                )),
            }
            text
        }
    };
    if view.key.is_none() {
        out!("{text}");
        return Ok(());
    }
    // The secret exists nowhere else: a key whose secret nobody received is revoked, so that a
    // retry (`--if-none` included) makes one that can be used.
    if let Err(error) = try_write_line(format_args!("{text}")) {
        let (id, undone) = (key.id, keys.revoke(key.id).await);
        bail!(match undone {
            Ok(_) => format!(
                "created API key {id} but could not print its secret ({error}): the key is \
                 revoked; create another"
            ),
            Err(_) => format!(
                "created API key {id} but could not print its secret ({error}); revoke it with \
                 `keys revoke {id}`"
            ),
        });
    }
    Ok(())
}

/// A file made for one secret: new (never an existing one), readable by its owner only.
struct SecretFile {
    path: PathBuf,
    file: std::fs::File,
}

impl SecretFile {
    fn create_new(path: &Path) -> anyhow::Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = match options.open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                "--output-file {} already exists; refusing to overwrite it (no key was created)",
                path.display()
            ),
            Err(e) => bail!(
                "cannot create --output-file {}: {e} (no key was created)",
                path.display()
            ),
        };
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
