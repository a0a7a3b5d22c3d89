//! `Config::from_toml_str` on arbitrary text must never panic. An accepted config must also
//! survive what the daemon does next: deriving the core's settings, listing warnings, and
//! rendering the effective config, which must parse back to the same config apart from the
//! redacted secrets (the promise `render_effective` documents).
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnpike::config::{Config, Secret};
use turnpike::proto::auth::NonceKey;

/// Secrets render as "<redacted>" (and equal secrets collapse into one when parsed back);
/// compare everything else.
fn redacted(mut config: Config) -> Config {
    let r = |_: &Secret| Secret::new("<redacted>");
    config.auth.secrets = config.auth.secrets.iter().map(r).collect();
    config.auth.secrets.dedup();
    config.api.tokens = config.api.tokens.iter().map(r).collect();
    config.api.tokens.dedup();
    for password in config.auth.users.values_mut() {
        *password = r(password);
    }
    config
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml_str(text, "fuzz") else {
        return;
    };
    let _ = config.warnings();
    let listen = &config.server.listen;
    let relay_ips: Vec<_> = listen.iter().map(|a| a.ip()).collect();
    let _ = turnpike::server_config(&config, listen, &relay_ips, &NonceKey::new([0; 32]));
    let rendered = config.render_effective();
    let again = Config::from_toml_str(&rendered, "rendered")
        .unwrap_or_else(|e| panic!("effective config does not parse back: {e}\n{rendered}"));
    assert!(
        redacted(again.clone()) == redacted(config.clone()),
        "effective config parses back to a different config:\n{rendered}\nbefore: {config:?}\nafter: {again:?}"
    );
});
