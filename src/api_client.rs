//! The client side of the HTTP API for `turnpike drain` and `turnpike sessions`: where the
//! API is (a URL, or a config file's `api.listen`), the token (flag, environment or config),
//! and one JSON request with the API's `{"error": …}` answers turned into messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use crate::cli::ApiArgs;
use crate::config::Config;
use crate::probe::http;
use crate::probe::tls::TlsOptions;

/// The environment variable read when `--api-token` is not given.
pub const TOKEN_ENV: &str = "TURNPIKE_API_TOKEN";
/// How long one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server's API, as the command line named it.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    tls: TlsOptions,
}

impl ApiClient {
    pub fn new(args: &ApiArgs) -> Result<Self, String> {
        let (base, config_token) = match &args.config {
            Some(path) => api_from_config(path)?,
            None => (args.api.clone(), None),
        };
        let token = args
            .api_token
            .clone()
            .or_else(|| std::env::var(TOKEN_ENV).ok())
            .filter(|t| !t.is_empty())
            .or(config_token);
        Ok(ApiClient {
            base,
            token,
            tls: TlsOptions {
                insecure: args.insecure,
                ca_file: args.ca_file.clone(),
            },
        })
    }

    /// `method path` with an optional JSON body; a 2xx answer read as `T`, anything else an
    /// error with the API's reason.
    pub fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<T, String> {
        let base = &self.base;
        let (code, body) = http::send(
            method,
            base,
            path,
            self.token.as_deref(),
            json,
            REQUEST_TIMEOUT,
            &self.tls,
        )?;
        if !(200..300).contains(&code) {
            let reason = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| body.trim().chars().take(200).collect());
            let hint = if code == 401 || code == 403 {
                format!(" (give --api-token or set {TOKEN_ENV})")
            } else {
                String::new()
            };
            return Err(format!(
                "{method} {base}{path}: HTTP {code}: {reason}{hint}"
            ));
        }
        serde_json::from_str(&body)
            .map_err(|e| format!("{method} {base}{path}: unexpected answer: {e}"))
    }
}

/// The API URL (`api.listen`, a wildcard address replaced by loopback) and the first
/// token of a config file.
fn api_from_config(path: &Path) -> Result<(String, Option<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config =
        Config::from_toml_str(&text, &path.display().to_string()).map_err(|e| e.to_string())?;
    let mut addr = config.api.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    let token = config.api.tokens.first().map(|t| t.expose().to_owned());
    Ok((format!("http://{addr}"), token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_gives_the_api_address_and_token() {
        let dir = std::env::temp_dir().join(format!("turnpike-drain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            "[api]\nlisten = \"0.0.0.0:8443\"\ntokens = [\"t1\", \"t2\"]\n",
        )
        .unwrap();
        let got = api_from_config(&path);
        std::fs::write(&path, "[api]\nlisten = \"[::]:9\"\n").unwrap();
        let v6 = api_from_config(&path);
        std::fs::write(&path, "[api]\nlisten = 8\n").unwrap();
        let bad = api_from_config(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got.unwrap(),
            ("http://127.0.0.1:8443".to_owned(), Some("t1".to_owned()))
        );
        assert_eq!(v6.unwrap(), ("http://[::1]:9".to_owned(), None));
        assert!(bad.unwrap_err().contains("api.listen"));
    }
}
