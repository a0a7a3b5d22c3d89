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
    config.secrets = config.secrets.iter().map(r).collect();
    config.secrets.dedup();
    config.api_tokens = config.api_tokens.iter().map(r).collect();
    config.api_tokens.dedup();
    config.static_users = config
        .static_users
        .iter()
        .map(|(name, s)| (name.clone(), r(s)))
        .collect();
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
    let relay_ips: Vec<_> = config.listen.iter().map(|a| a.ip()).collect();
    let _ = turnpike::server_config(&config, &config.listen, &relay_ips, &NonceKey::new([0; 32]));
    let rendered = config.render_effective();
    let again = Config::from_toml_str(&rendered, "rendered")
        .unwrap_or_else(|e| panic!("effective config does not parse back: {e}\n{rendered}"));
    assert!(
        redacted(again.clone()) == redacted(config.clone()),
        "effective config parses back to a different config:\n{rendered}\nbefore: {config:?}\nafter: {again:?}"
    );
});
