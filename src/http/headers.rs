//! Reading a request header that may be given once only.

use axum::http::header::AsHeaderName;
use axum::http::{HeaderMap, HeaderValue};

/// A header sent more than once: which copy counts differs between proxies and frameworks (some
/// take the first, some the last, some join them into one line), so none is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SentTwice;

/// The one value of `name`, `None` when it is not sent, or [`SentTwice`].
pub(crate) fn single<K: AsHeaderName>(
    headers: &HeaderMap,
    name: K,
) -> Result<Option<&HeaderValue>, SentTwice> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (value, None) => Ok(value),
        (_, Some(_)) => Err(SentTwice),
    }
}
