//! The admin console: a page on the admin port to look at and act on live sockets.
//!
//! The page is static (HTML, one script, one stylesheet, an icon, compiled into the
//! binary with `include_str!`, so there is no build step and nothing to
//! deploy beside the binary). Everything it shows comes from what an operator
//! could fetch by hand: `/metrics` and the `/api/*` endpoints, called from the
//! browser with the admin token the operator types in. The assets themselves
//! hold no secret, so they are served without the token, like `/metrics`.
//!
//! Why the headers: `Content-Security-Policy: default-src 'self'` means the
//! page runs only its own script and talks only to its own origin (socket
//! records carry client-chosen strings, so even a rendering bug cannot become
//! script that reads the token), `frame-ancestors 'none'` keeps the kick
//! button out of other sites' frames, and `Cache-Control: no-store` keeps an
//! older binary's console from outliving an upgrade in a browser cache.

use sockhive_shared::http::Response;

/// The page's URL on the admin port.
pub const PATH: &str = "/console";

/// The policy every console response carries (see the module comment).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; frame-ancestors 'none'";

/// The page, its script and its stylesheet: (path, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/console",
        "text/html; charset=utf-8",
        include_str!("console/index.html"),
    ),
    (
        "/console/",
        "text/html; charset=utf-8",
        include_str!("console/index.html"),
    ),
    (
        "/console/console.js",
        "text/javascript; charset=utf-8",
        include_str!("console/console.js"),
    ),
    (
        "/console/console.css",
        "text/css; charset=utf-8",
        include_str!("console/console.css"),
    ),
    // Without an icon of its own the browser asks for /favicon.ico and logs the 404.
    (
        "/console/favicon.svg",
        "image/svg+xml",
        include_str!("console/favicon.svg"),
    ),
];

/// Whether `path` belongs to the console, so the admin router hands it here.
pub fn owns(path: &str) -> bool {
    path == PATH || path.starts_with("/console/")
}

/// Answers a `GET` of a console path: the asset, or 404 for a path the console does not have.
pub fn serve(path: &str) -> Response {
    let response = match ASSETS.iter().find(|(at, _, _)| *at == path) {
        Some((_, content_type, body)) => Response {
            status: 200,
            headers: Vec::new(),
            content_type,
            body: body.as_bytes().to_vec(),
        },
        None => Response::error(404, format!("no console asset at {path}")),
    };
    response
        .with_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        .with_header("Cache-Control", "no-store")
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Referrer-Policy", "no-referrer")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
        response
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn every_asset_is_served_with_its_type_and_the_locked_down_headers() {
        for (path, content_type, body) in ASSETS {
            assert!(owns(path), "{path}");
            let response = serve(path);
            assert_eq!(response.status, 200, "{path}");
            assert_eq!(response.content_type, *content_type);
            assert_eq!(response.body, body.as_bytes());
            assert_eq!(
                header(&response, "Content-Security-Policy"),
                Some(CONTENT_SECURITY_POLICY)
            );
            assert_eq!(header(&response, "Cache-Control"), Some("no-store"));
        }
    }

    #[test]
    fn an_unknown_console_path_is_404_with_the_same_headers() {
        let response = serve("/console/nope.js");
        assert_eq!(response.status, 404);
        assert_eq!(header(&response, "Cache-Control"), Some("no-store"));
        assert!(!owns("/consoles"));
        assert!(!owns("/api/sockets/query"));
    }

    /// The policy forbids inline script, so an inline one would silently not run.
    #[test]
    fn the_page_has_no_inline_script_and_loads_nothing_from_elsewhere() {
        let html = include_str!("console/index.html");
        for (at, _) in html.match_indices("<script") {
            let tag = &html[at..at + html[at..].find('>').expect("closed tag")];
            assert!(tag.contains("src=\"/console/"), "inline script: {tag}");
        }
        let handler = html.split(['<', ' ']).find(|word| {
            word.strip_prefix("on")
                .and_then(|rest| rest.split_once('='))
                .is_some_and(|(name, _)| name.chars().all(|c| c.is_ascii_lowercase()))
        });
        assert_eq!(handler, None, "no inline event handlers");
        assert!(!html.contains("style=\""), "no inline styles");
        for (path, _, body) in ASSETS {
            // An SVG names its XML namespace by URL; that loads nothing.
            let body = body.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            assert!(!body.contains("http://"), "{path} loads from elsewhere");
            assert!(!body.contains("https://"), "{path} loads from elsewhere");
            assert!(!body.contains("innerHTML"), "{path} renders text as markup");
        }
    }
}
