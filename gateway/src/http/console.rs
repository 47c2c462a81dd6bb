//! The web console (`/console`): plain HTML, CSS and JavaScript modules from `gateway/console/`,
//! embedded in the binary and served as they are. There is no build step and nothing is fetched
//! from elsewhere; the pages read the admin API on this origin with the token the user enters
//! (kept in the browser tab's session storage, sent as a bearer header).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};

use super::Reply;

/// Where the console is served.
pub const PREFIX: &str = "/console";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every asset: its path under [`PREFIX`], media type and contents.
const ASSETS: [(&str, &str, &str); 5] = [
    ("", HTML, include_str!("../../console/index.html")),
    ("app.js", JS, include_str!("../../console/app.js")),
    ("api.js", JS, include_str!("../../console/api.js")),
    ("charts.js", JS, include_str!("../../console/charts.js")),
    ("console.css", CSS, include_str!("../../console/console.css")),
];

/// The console's answer for `path`, or `None` when the path is not the console's.
pub fn serve(method: &Method, path: &str) -> Option<Reply> {
    let rest = path.strip_prefix(PREFIX)?;
    let name = match rest.strip_prefix('/') {
        Some(name) => name,
        None if rest.is_empty() => "",
        None => return None, // `/consoles`, say: not ours
    };
    if method != Method::GET && method != Method::HEAD {
        let mut reply =
            super::error_reply(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "the console is read with GET");
        reply.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(reply);
    }
    let Some((_, media_type, body)) = ASSETS.iter().find(|(asset, ..)| *asset == name) else {
        return Some(super::error_reply(StatusCode::NOT_FOUND, "not_found", "no such console page"));
    };
    let mut reply = Response::new(Full::new(if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(body.as_bytes())
    }));
    let headers = reply.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(media_type));
    // Always revalidated: a gateway upgrade must not leave a browser on old pages.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    for (name, value) in [
        // Only this origin's scripts, styles and API; no inline script, no framing, no referrer.
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
    ] {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_its_type_and_others_are_not_found() {
        for (path, media_type) in
            [("/console", HTML), ("/console/", HTML), ("/console/app.js", JS), ("/console/console.css", CSS)]
        {
            let reply = serve(&Method::GET, path).unwrap();
            assert_eq!(reply.status(), StatusCode::OK, "{path}");
            assert_eq!(reply.headers()[CONTENT_TYPE], media_type, "{path}");
            assert!(reply.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
        }
        assert_eq!(serve(&Method::GET, "/console/secret.txt").unwrap().status(), StatusCode::NOT_FOUND);
        assert_eq!(serve(&Method::POST, "/console").unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(serve(&Method::GET, "/consoles").is_none());
        assert!(serve(&Method::GET, "/v1/events/x").is_none());
    }

    #[test]
    fn the_pages_load_no_script_or_style_from_elsewhere_and_stay_small() {
        let total: usize = ASSETS.iter().map(|(_, _, body)| body.len()).sum();
        assert!(total < 300 * 1024, "console assets are {total} bytes");
        for (name, _, body) in ASSETS {
            assert!(!body.contains("http://") && !body.contains("https://"), "{name} names another origin");
        }
    }
}
