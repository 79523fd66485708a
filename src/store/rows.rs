//! Rows as both stores return them, and their conversion into domain types, written once.
//!
//! Each store's SQL shapes its results to these rows: PostgreSQL casts uuids to text and arrays to
//! JSON, SQLite stores them that way. Only timestamps differ on the wire, which [`Stamp`] hides.

use std::str::FromStr;
use std::sync::LazyLock;

use dashmap::DashSet;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteTypeInfo, SqliteValueRef};
use sqlx::{ColumnIndex, Database, Decode, FromRow, Postgres, Row, Sqlite, Type};
use time::format_description::BorrowedFormatItem;
use time::{OffsetDateTime, PrimitiveDateTime};
use uuid::Uuid;

use super::{StoreError, parse_status};
use crate::domain::feed::{FeedPosition, FeedRow};
use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::keys::{AccountGroupAccess, ApiKey, Permission};
use crate::domain::scan::{ClaimedScan, Scan, ScanChange, ScanEvent, ScanStatus};

/// How SQLite keeps instants: the API's text form, fixed width, so text order is time order
/// (listing and stamping compare it in SQL), and microseconds, as PostgreSQL keeps them, so both
/// stores answer the same instants.
pub(super) const SQLITE_TIMESTAMP: &[BorrowedFormatItem<'static>] = crate::domain::rfc3339::FORMAT;

/// An instant as either store returns it: PostgreSQL's `timestamptz`, SQLite's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp(pub OffsetDateTime);

impl Type<Postgres> for Stamp {
    fn type_info() -> PgTypeInfo {
        <OffsetDateTime as Type<Postgres>>::type_info()
    }
}

impl<'r> Decode<'r, Postgres> for Stamp {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Self(<OffsetDateTime as Decode<Postgres>>::decode(value)?))
    }
}

impl Type<Sqlite> for Stamp {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'r> Decode<'r, Sqlite> for Stamp {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let raw = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(Self(
            PrimitiveDateTime::parse(raw, SQLITE_TIMESTAMP)?.assume_utc(),
        ))
    }
}

/// A text column parsed into a domain type as it is decoded, from the row's bytes: no `String` in
/// between (a scan's ids and statuses are read on every request). A value that does not parse is
/// a decode error naming the column and the value: the row breaks the domain's rules.
pub(super) struct Parsed<T>(pub T);

impl<T, DB: Database> Type<DB> for Parsed<T>
where
    for<'a> &'a str: Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <&str as Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <&str as Type<DB>>::compatible(ty)
    }
}

impl<'r, T, DB: Database> Decode<'r, DB> for Parsed<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
    &'r str: Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> Result<Self, BoxDynError> {
        parse_text(<&str as Decode<DB>>::decode(value)?)
    }
}

fn parse_text<T>(raw: &str) -> Result<Parsed<T>, BoxDynError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    raw.parse()
        .map(Parsed)
        .map_err(|error| format!("{raw:?}: {error}").into())
}

/// A type a store's rows decode: the bound each row reader below puts on its columns' types.
///
/// Rows are read by hand rather than derived: sqlx's derive is its `macros` feature, which compiles
/// a second copy of sqlx, both drivers and their dependencies for the compiler's host (54 of the
/// 483 CPU-seconds of a first release build here).
pub(super) trait Decodes<'r, R: Row>: Decode<'r, R::Database> + Type<R::Database> {}

impl<'r, R: Row, T: Decode<'r, R::Database> + Type<R::Database>> Decodes<'r, R> for T {}

/// A row struct whose fields are read from the columns of their names, each field's type bound
/// by [`Decodes`]: what sqlx's `#[derive(FromRow)]` writes, without its `macros` feature.
macro_rules! row {
    ($(#[$doc:meta])* $name:ident { $($(#[$field_doc:meta])* $field:ident: $type:ty,)* }) => {
        $(#[$doc])*
        pub(super) struct $name {
            $($(#[$field_doc])* pub $field: $type,)*
        }

        impl<'r, R: Row> FromRow<'r, R> for $name
        where
            &'r str: ColumnIndex<R>,
            $($type: Decodes<'r, R>,)*
        {
            fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
                Ok(Self {
                    $($field: row.try_get(stringify!($field))?,)*
                })
            }
        }
    };
}

/// A column that only some statements select: `None` where it is absent.
fn optional_column<'r, R, T>(row: &'r R, name: &'r str) -> Result<Option<T>, sqlx::Error>
where
    R: Row,
    &'r str: ColumnIndex<R>,
    T: Decodes<'r, R>,
{
    match row.try_get(name) {
        Err(sqlx::Error::ColumnNotFound(_)) => Ok(None),
        read => read.map(Some),
    }
}

fn instant(stamp: Option<Stamp>) -> Option<OffsetDateTime> {
    stamp.map(|stamp| stamp.0)
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

pub(super) struct ScanRow {
    pub id: Parsed<ScanId>,
    pub account_group_id: Parsed<AccountGroupId>,
    pub status: Parsed<ScanStatus>,
    pub created_at: Stamp,
    pub updated_at: Stamp,
    pub started_at: Option<Stamp>,
    pub finished_at: Option<Stamp>,
    pub cancelled_at: Option<Stamp>,
    /// Only a transition's result carries it: the status the scan moved from.
    pub previous_status: Option<Parsed<ScanStatus>>,
    /// Only a claim's read carries it: the key of the scan's latest audit row to running.
    pub started_by: Option<String>,
}

impl<'r, R: Row> FromRow<'r, R> for ScanRow
where
    &'r str: ColumnIndex<R>,
    Parsed<ScanId>: Decodes<'r, R>,
    Parsed<AccountGroupId>: Decodes<'r, R>,
    Parsed<ScanStatus>: Decodes<'r, R>,
    Stamp: Decodes<'r, R>,
    String: Decodes<'r, R>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            account_group_id: row.try_get("account_group_id")?,
            status: row.try_get("status")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            cancelled_at: row.try_get("cancelled_at")?,
            previous_status: optional_column(row, "previous_status")?.flatten(),
            started_by: optional_column(row, "started_by")?.flatten(),
        })
    }
}

impl ScanRow {
    pub(super) fn into_claimed(mut self) -> Result<ClaimedScan, StoreError> {
        let started_by = self.started_by.take();
        let scan = self.into_scan()?;
        let started_by = started_by
            .as_deref()
            .map(Uuid::parse_str)
            .transpose()
            .map_err(|_| corrupt(format!("start of scan {}", scan.id)))?;
        Ok(ClaimedScan { scan, started_by })
    }

    pub(super) fn into_scan(self) -> Result<Scan, StoreError> {
        Ok(Scan {
            id: self.id.0,
            account_group_id: self.account_group_id.0,
            status: self.status.0,
            created_at: self.created_at.0,
            updated_at: self.updated_at.0,
            started_at: instant(self.started_at),
            finished_at: instant(self.finished_at),
            cancelled_at: instant(self.cancelled_at),
        })
    }
}

row! {
    /// One audit row of a scan.
    EventRow {
        scan_id: String,
        from_status: Option<String>,
        to_status: String,
        api_key_id: Option<String>,
        trace_id: Option<String>,
        occurred_at: Stamp,
        reason: Option<String>,
    }
}

impl EventRow {
    pub(super) fn into_event(self) -> Result<ScanEvent, StoreError> {
        let bad = || corrupt(format!("event of scan {:?}", self.scan_id));
        Ok(ScanEvent {
            scan_id: ScanId::parse(&self.scan_id).map_err(|_| bad())?,
            from: self.from_status.as_deref().map(parse_status).transpose()?,
            to: parse_status(&self.to_status)?,
            api_key_id: self
                .api_key_id
                .as_deref()
                .map(Uuid::parse_str)
                .transpose()
                .map_err(|_| bad())?,
            trace_id: self.trace_id.clone(),
            at: self.occurred_at.0,
            reason: self.reason,
        })
    }
}

row! {
    /// One audit row as the change feed reads it.
    ChangeRow {
        /// The writing transaction's id as text (PostgreSQL's xid8 has no sqlx type); "0" on SQLite.
        xid: String,
        id: i64,
        scan_id: String,
        account_group_id: String,
        /// NULL for a creation.
        from_status: Option<String>,
        to_status: String,
        trace_id: Option<String>,
        occurred_at: Stamp,
        reason: Option<String>,
    }
}

impl ChangeRow {
    pub(super) fn into_feed_row(self) -> Result<FeedRow, StoreError> {
        let bad = || corrupt(format!("event {}", self.id));
        Ok(FeedRow {
            position: FeedPosition {
                xid: self.xid.parse().map_err(|_| bad())?,
                id: self.id,
            },
            change: ScanChange {
                scan_id: ScanId::parse(&self.scan_id).map_err(|_| bad())?,
                account_group_id: AccountGroupId::parse(&self.account_group_id)
                    .map_err(|_| bad())?,
                from: self.from_status.as_deref().map(parse_status).transpose()?,
                to: parse_status(&self.to_status)?,
                at: self.occurred_at.0,
                reason: self.reason,
            },
            trace_id: self.trace_id,
        })
    }
}

row! {
    /// A key without its hash; lists are JSON arrays (PostgreSQL selects `array_to_json(…)::text`).
    KeyRow {
        id: String,
        name: String,
        permissions: String,
        account_group_ids: Option<String>,
        created_at: Stamp,
        expires_at: Option<Stamp>,
        revoked_at: Option<Stamp>,
    }
}

/// An idempotency key's group and the scan it started.
pub(super) struct ClaimedKeyRow {
    pub key_group: String,
    pub scan: ScanRow,
}

impl<'r, R: Row> FromRow<'r, R> for ClaimedKeyRow
where
    &'r str: ColumnIndex<R>,
    String: Decodes<'r, R>,
    ScanRow: FromRow<'r, R>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Self {
            key_group: row.try_get("key_group")?,
            scan: ScanRow::from_row(row)?,
        })
    }
}

/// The keys' permissions this process does not know and has said so of (bounded by the keys).
static UNKNOWN_PERMISSIONS_TOLD: LazyLock<DashSet<(String, String)>> = LazyLock::new(DashSet::new);

impl TryFrom<KeyRow> for ApiKey {
    type Error = StoreError;

    fn try_from(row: KeyRow) -> Result<Self, Self::Error> {
        let bad = |what: String| corrupt(format!("api key {}: {what}", row.id));
        let list = |raw: &str| -> Result<Vec<String>, StoreError> {
            serde_json::from_str(raw).map_err(|e| bad(e.to_string()))
        };
        // A permission this version does not know (one a newer version added, seen during a
        // rolling upgrade or after a rollback) is one the key does not have here: refusing the
        // whole row answered its requests 500 and failed `keys list` for every key. Said once a
        // process, so that `keys list` does not show the key as holding less than it does
        // without a word, and a replica does not say it again at every read of the key.
        let permissions = list(&row.permissions)?
            .iter()
            .filter_map(|p| {
                let known = Permission::from_str(p).ok();
                if known.is_none() && UNKNOWN_PERMISSIONS_TOLD.insert((row.id.clone(), p.clone())) {
                    tracing::warn!(
                        api_key.id = %row.id,
                        permission = %p,
                        "a key holds a permission this version does not know; taken as one it lacks"
                    );
                }
                known
            })
            .collect();
        let access = match row.account_group_ids.as_deref() {
            None => AccountGroupAccess::All,
            Some(raw) => AccountGroupAccess::Only(
                list(raw)?
                    .iter()
                    .map(|g| AccountGroupId::parse(g).map_err(|e| bad(e.to_string())))
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(ApiKey {
            id: Uuid::parse_str(&row.id).map_err(|e| bad(e.to_string()))?,
            name: row.name,
            permissions,
            access,
            created_at: row.created_at.0,
            expires_at: instant(row.expires_at),
            revoked_at: instant(row.revoked_at),
        })
    }
}
