//! `http://host[:port]/path` as sockhive's outgoing calls to the app take it
//! (the HTTP user lookup, the app hooks): one parser, so `check-config`
//! refuses exactly what a worker could not call.

/// A parsed `http://` URL: where to connect and what to request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port` to connect to and to send as `Host` (port 80 when absent).
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Why a URL cannot be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not http://host[:port]/path (IPv6 hosts need a port; no user:password@, no whitespace)")]
pub struct BadHttpUrl(pub String);

impl HttpUrl {
    /// Parses `url`; only plain `http://` (the app is on the same host or
    /// network; TLS belongs to a sidecar, not to every worker).
    pub fn parse(url: &str) -> Result<HttpUrl, BadHttpUrl> {
        let bad = || BadHttpUrl(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        if authority.is_empty()
            || authority.contains('@')
            || authority.contains(char::is_whitespace)
        {
            return Err(bad());
        }
        let authority = match authority.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                authority.to_owned()
            }
            // IPv6 literals need an explicit port (`[::1]:3000`).
            Some(_) => return Err(bad()),
            None => format!("{authority}:80"),
        };
        if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        Ok(HttpUrl {
            authority,
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_authority_and_path() {
        let url = HttpUrl::parse("http://127.0.0.1:3000/sockhive").unwrap();
        assert_eq!(url.authority, "127.0.0.1:3000");
        assert_eq!(url.path, "/sockhive");
        assert_eq!(HttpUrl::parse("http://app").unwrap().authority, "app:80");
        assert_eq!(HttpUrl::parse("http://app").unwrap().path, "/");
        for bad in [
            "https://app/x",
            "http://",
            "http://u:p@app/x",
            "http://app:99999/x",
            "http://[::1]/x",
            "http://app/a b",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
