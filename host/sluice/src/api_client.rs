//! The CLI's client for the running server's admin API, authenticated with the local key
//! the server writes to `<data_dir>/cli.key` at start (readable only by its owner).

use anyhow::{Context, Result, bail};
use sluice_config::Settings;

pub struct ApiClient {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

impl ApiClient {
    /// The client for the server these settings describe; needs `[http]`.
    pub fn new(settings: &Settings) -> Result<ApiClient> {
        let Some(bind) = settings.http_bind else {
            bail!("this needs the running server's admin API: configure [http]");
        };
        let key_file = settings.data_dir.join("cli.key");
        let key = std::fs::read_to_string(&key_file).with_context(|| {
            format!(
                "cannot read the server's local API key {} (is the server running?)",
                key_file.display()
            )
        })?;
        let host = if bind.ip().is_unspecified() {
            std::net::SocketAddr::from(([127, 0, 0, 1], bind.port()))
        } else {
            bind
        };
        Ok(ApiClient {
            base: format!("http://{host}/api/v1"),
            auth: format!("Bearer {}", key.trim()),
            agent: ureq::AgentBuilder::new()
                .timeout(std::time::Duration::from_secs(60))
                .build(),
        })
    }

    /// One request; the JSON answer, or the server's error message.
    pub fn call(&self, method: &str, path: &str) -> Result<serde_json::Value> {
        Ok(self.request(method, path)?.into_json()?)
    }

    /// One request; the answer as text.
    pub fn text(&self, method: &str, path: &str) -> Result<String> {
        Ok(self.request(method, path)?.into_string()?)
    }

    /// A GET with query parameters (encoded here); the JSON answer.
    pub fn get_with(&self, path: &str, params: &[(&str, String)]) -> Result<serde_json::Value> {
        Ok(self.request_with("GET", path, params)?.into_json()?)
    }

    /// One request; the answer's bytes.
    pub fn bytes(&self, method: &str, path: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut self.request(method, path)?.into_reader(), &mut out)?;
        Ok(out)
    }

    fn request(&self, method: &str, path: &str) -> Result<ureq::Response> {
        self.request_with(method, path, &[])
    }

    fn request_with(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<ureq::Response> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .agent
            .request(method, &url)
            .set("Authorization", &self.auth);
        for (k, v) in params {
            request = request.query(k, v);
        }
        match request.call() {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(code, r)) => {
                let body: serde_json::Value = r.into_json().unwrap_or_default();
                bail!(
                    "{method} {url}: {code} {}",
                    body["error"].as_str().unwrap_or("(no message)")
                )
            }
            Err(e) => bail!("{method} {url}: {e}"),
        }
    }
}

/// Where a command that reads a store works: on the store itself while the server is
/// stopped, through the running server's API while it holds the store's lock.
pub enum Access<T> {
    Local(T),
    Api(ApiClient),
}

/// Opens a store with `open`; when that fails (the running server holds it) and `[http]`
/// is configured, the API instead; otherwise the open's error, naming `what` and `dir`.
pub fn local_or_api<T, E>(
    settings: &Settings,
    what: &str,
    dir: &std::path::Path,
    open: impl FnOnce() -> std::result::Result<T, E>,
) -> Result<Access<T>>
where
    E: Into<anyhow::Error>,
{
    match open() {
        Ok(store) => Ok(Access::Local(store)),
        Err(e) if settings.http_bind.is_none() => Err(e.into()).with_context(|| {
            format!(
                "cannot open {what} in {} (is the server running? stop it, or configure [http] so that this command can use its API)",
                dir.display()
            )
        }),
        Err(_) => Ok(Access::Api(ApiClient::new(settings)?)),
    }
}
