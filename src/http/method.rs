//! The request method as metrics, logs and error details may show it: one of the nine standard
//! methods, or `other`. A client can send any token as a method; left as it came, each new one
//! would be a new metrics series kept for the life of the process, and a copy in every log line.

use axum::http::Method;

/// What stands for every method that is not one of the standard nine.
pub(crate) const OTHER: &str = "other";

/// The method's name when it is standard (RFC 9110 and PATCH), else [`OTHER`].
pub(crate) fn label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_methods_keep_their_name_and_every_other_is_other() {
        for name in [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
        ] {
            assert_eq!(label(&Method::from_bytes(name.as_bytes()).unwrap()), name);
        }
        for name in ["get", "PROPFIND", "X".repeat(4096).as_str(), "GETS"] {
            assert_eq!(label(&Method::from_bytes(name.as_bytes()).unwrap()), OTHER);
        }
    }
}
