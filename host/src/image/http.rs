//! The HTTP(S) client of the image pipeline: blocking ureq with rustls on ring (aws-lc and
//! OpenSSL bindings do not build on OpenBSD), with timeouts that notice a dead connection
//! but never cut a slow download short, and status codes handled by the caller.

use std::io::Read;
use std::time::Duration;

use super::ImageError;

pub type Response = ureq::http::Response<ureq::Body>;

#[derive(Debug, Clone)]
pub struct Http {
    agent: ureq::Agent,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Http {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(format!("almavmm/{}", almavmm_shared::VERSION))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // Per read, not per body: a 550 MiB image on a slow link may take an hour.
            .timeout_per_read(Some(Duration::from_secs(60)))
            .build();
        Http { agent: config.into() }
    }

    /// GET `url`, optionally from byte `from` on (an HTTP Range request).
    pub fn get(&self, url: &str, from: u64) -> Result<Response, ImageError> {
        let mut req = self.agent.get(url);
        if from > 0 {
            req = req.header("Range", format!("bytes={from}-"));
        }
        req.call().map_err(|e| ImageError::Http { url: url.to_string(), detail: e.to_string() })
    }

    /// GET a small file (checksum list, key, signature) whole, refusing more than `limit`
    /// bytes so a hostile server cannot make us allocate without bound.
    pub fn get_small(&self, url: &str, limit: u64) -> Result<Vec<u8>, ImageError> {
        let mut resp = self.get(url, 0)?;
        check_status(url, resp.status().as_u16())?;
        let mut buf = Vec::new();
        resp.body_mut()
            .as_reader()
            .take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| ImageError::Http { url: url.to_string(), detail: e.to_string() })?;
        if buf.len() as u64 > limit {
            return Err(ImageError::TooLarge { url: url.to_string(), limit });
        }
        Ok(buf)
    }
}

/// Turn a status other than 200/206 into the error a user can act on.
pub fn check_status(url: &str, status: u16) -> Result<(), ImageError> {
    match status {
        200 | 206 => Ok(()),
        404 | 410 => Err(ImageError::NotFound { url: url.to_string() }),
        s => Err(ImageError::HttpStatus { url: url.to_string(), status: s }),
    }
}

/// `url` with its last path segment replaced by `name` (the CHECKSUM beside an image).
pub fn sibling_url(url: &str, name: &str) -> String {
    let base = url.split(['?', '#']).next().unwrap_or(url);
    match base.rfind('/') {
        Some(i) => format!("{}{name}", &base[..=i]),
        None => name.to_string(),
    }
}

/// The file name an image URL points to: its last path segment, percent-decoding left
/// alone (checksum lists name files as they are stored).
pub fn file_name_of(url: &str) -> Result<String, ImageError> {
    let bad = |reason: &str| ImageError::BadUrl { url: url.to_string(), reason: reason.to_string() };
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(bad("only http:// and https:// URLs are supported"));
    }
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path.rsplit('/').next().unwrap_or("");
    if name.is_empty() || name == "." || name == ".." || path.matches('/').count() < 3 {
        return Err(bad("it does not end in a file name"));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_and_file_names() {
        let u =
            "https://repo.almalinux.org/almalinux/9/cloud/x86_64/images/AlmaLinux-9-GenericCloud-latest.x86_64.qcow2";
        assert_eq!(sibling_url(u, "CHECKSUM"), "https://repo.almalinux.org/almalinux/9/cloud/x86_64/images/CHECKSUM");
        assert_eq!(file_name_of(u).unwrap(), "AlmaLinux-9-GenericCloud-latest.x86_64.qcow2");
        assert_eq!(file_name_of("http://127.0.0.1:8080/d/x.qcow2?sig=1").unwrap(), "x.qcow2");
        assert!(file_name_of("https://example.org/").is_err());
        assert!(file_name_of("https://example.org").is_err());
        assert!(file_name_of("ftp://example.org/x.qcow2").is_err());
        assert!(file_name_of("/tmp/x.qcow2").is_err());
    }
}
