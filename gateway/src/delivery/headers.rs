//! Which headers a plugin may put on a delivery. The gateway sets `content-type`, `user-agent` and
//! the Standard Webhooks headers itself, and the HTTP client manages the framing ones; a plugin may
//! set any other header whose name and value are valid HTTP. Ingest checks what plugins add (a bad
//! header fails the event with 422 at once), and the worker skips reserved names on records stored
//! before the check existed.

use hyper::header::{HeaderName, HeaderValue};

/// Names a plugin may not set (compared in lower case); `webhook-*` is reserved too.
const RESERVED: [&str; 9] = [
    "content-type",
    "content-length",
    "user-agent",
    "host",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
];

/// Whether the gateway (or the HTTP client) owns header `name`.
pub fn is_reserved(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("webhook-") || RESERVED.contains(&name.as_str())
}

/// Why a plugin may not add `name: value`, or `Ok` when it may.
pub fn check_plugin_header(name: &str, value: &str) -> Result<(), String> {
    if is_reserved(name) {
        return Err(format!("header `{name}` is set by the gateway; a plugin may not set it"));
    }
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("`{name}` is not a valid HTTP header name"))?;
    HeaderValue::from_str(value).map_err(|_| format!("the value of header `{name}` is not valid in HTTP"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_may_set_their_own_headers_but_not_the_gateways() {
        assert!(check_plugin_header("x-routed-by", "python").is_ok());
        for name in ["Content-Type", "user-agent", "webhook-signature", "Host", "content-length"] {
            assert!(check_plugin_header(name, "x").unwrap_err().contains("set by the gateway"), "{name}");
        }
        assert!(check_plugin_header("bad header", "x").unwrap_err().contains("not a valid HTTP header name"));
        assert!(check_plugin_header("x-ok", "line\nbreak").unwrap_err().contains("not valid in HTTP"));
    }
}
