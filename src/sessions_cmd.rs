//! `turnpike sessions list|kick|revoke|revocations|unrevoke`: the operator's side of
//! `/api/v1/sessions` and `/api/v1/revocations` ([`crate::sessions`]). A table by default,
//! `--json` for scripts.

use std::process::ExitCode;

use crate::api_client::ApiClient;
use crate::cli::{SessionsAction, SessionsArgs};
use crate::sessions::{Page, Revocation, Revoked, Session, MAX_PAGE};

pub fn run(args: &SessionsArgs) -> ExitCode {
    match sessions(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turnpike sessions: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sessions(args: &SessionsArgs) -> Result<(), String> {
    let api = ApiClient::new(&args.api)?;
    match &args.action {
        SessionsAction::List {
            user,
            prefix,
            limit,
        } => list(&api, user.as_deref(), prefix.as_deref(), *limit, args.json),
        SessionsAction::Kick { id } => {
            let path = format!("/api/v1/sessions/{}", encode(id));
            let answer: serde_json::Value = api.call("DELETE", &path, None)?;
            print(args.json, &answer, || format!("session {id} ended"));
            Ok(())
        }
        SessionsAction::Revoke {
            user,
            until,
            for_secs,
        } => {
            let until = until.or_else(|| for_secs.map(|secs| crate::unix_now() + secs));
            let body = serde_json::json!({ "username": user, "until": until });
            let revoked: Revoked = api.call("POST", "/api/v1/revocations", Some(&body))?;
            print(args.json, &revoked, || {
                format!(
                    "{} revoked until {} ({} s from now); {} ended{}",
                    revoked.username,
                    revoked.until,
                    revoked.until.saturating_sub(crate::unix_now()),
                    count(revoked.ended, "allocation"),
                    missing(&revoked.missing_workers)
                )
            });
            Ok(())
        }
        SessionsAction::Revocations => {
            #[derive(serde::Deserialize, serde::Serialize)]
            struct List {
                revocations: Vec<Revocation>,
            }
            let list: List = api.call("GET", "/api/v1/revocations", None)?;
            print(args.json, &list, || {
                let now = crate::unix_now();
                let mut rows = vec![["USER".to_owned(), "UNTIL".to_owned(), "LEFT".to_owned()]];
                rows.extend(list.revocations.iter().map(|r| {
                    [
                        r.username.clone(),
                        r.until.to_string(),
                        duration(r.until.saturating_sub(now)),
                    ]
                }));
                table(&rows)
            });
            Ok(())
        }
        SessionsAction::Unrevoke { user } => {
            let path = format!("/api/v1/revocations/{}", encode(user));
            let answer: serde_json::Value = api.call("DELETE", &path, None)?;
            print(args.json, &answer, || format!("{user}: revocation lifted"));
            Ok(())
        }
    }
}

/// Fetches pages until `limit` sessions or the last page.
fn list(
    api: &ApiClient,
    user: Option<&str>,
    prefix: Option<&str>,
    limit: u64,
    json: bool,
) -> Result<(), String> {
    let mut sessions: Vec<Session> = Vec::new();
    let mut missing: Vec<usize> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let left = (limit as usize - sessions.len()).min(MAX_PAGE);
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("limit", &left.to_string());
        for (key, value) in [
            ("username", user),
            ("prefix", prefix),
            ("after", after.as_deref()),
        ] {
            if let Some(value) = value {
                query.append_pair(key, value);
            }
        }
        let page: Page = api.call("GET", &format!("/api/v1/sessions?{}", query.finish()), None)?;
        sessions.extend(page.sessions);
        for worker in page.missing_workers {
            if !missing.contains(&worker) {
                missing.push(worker);
            }
        }
        match page.next {
            Some(next) if sessions.len() < limit as usize => after = Some(next),
            _ => break,
        }
    }
    if !missing.is_empty() {
        eprintln!("turnpike sessions:{}", missing_text(&missing));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string(&sessions).expect("sessions serialize")
        );
        return Ok(());
    }
    let now = crate::unix_now();
    let mut rows = vec![[
        "ID",
        "USER",
        "CLIENT",
        "TRANSPORT",
        "RELAY",
        "AGE",
        "EXPIRES",
        "PERMS",
        "CHANS",
        "TO PEER",
        "FROM PEER",
    ]
    .map(str::to_owned)];
    rows.extend(sessions.iter().map(|s| {
        [
            s.id.clone(),
            s.username.clone(),
            s.client.to_string(),
            s.transport.clone(),
            s.relays
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            duration(now.saturating_sub(s.created)),
            duration(s.expires.saturating_sub(now)),
            s.permissions.to_string(),
            s.channels.to_string(),
            bytes(s.to_peer_bytes),
            bytes(s.from_peer_bytes),
        ]
    }));
    print!("{}", table(&rows));
    println!("{}", count(sessions.len(), "session"));
    Ok(())
}

fn print<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string(value).expect("answers serialize")
        );
    } else {
        let text = text();
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
    }
}

/// Left-aligned columns two spaces apart.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A path segment with everything but unreserved characters percent-encoded.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.2} GB", n as f64 / 1e9),
    }
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn missing(workers: &[usize]) -> String {
    if workers.is_empty() {
        String::new()
    } else {
        format!(";{}", missing_text(workers))
    }
}

fn missing_text(workers: &[usize]) -> String {
    let list: Vec<String> = workers.iter().map(ToString::to_string).collect();
    format!(
        " worker(s) {} did not answer in time; their sessions are not included",
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_sizes_read_well() {
        let rows = [
            ["ID".to_owned(), "USER".to_owned()],
            ["0-1".to_owned(), "1767225600:alice".to_owned()],
        ];
        assert_eq!(table(&rows), "ID   USER\n0-1  1767225600:alice\n");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(61), "1m01s");
        assert_eq!(duration(7322), "2h02m");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_500), "1.5 kB");
        assert_eq!(bytes(2_500_000), "2.5 MB");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("1767225600:alice"), "1767225600%3Aalice");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
        assert_eq!(encode("0-17"), "0-17");
    }
}
