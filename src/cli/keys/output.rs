//! How the key commands print, whichever way they ran: the API's JSON
//! shapes (`PublicKey`, `SigningKeySet`, `{"keys": […]}`) for scripts, or
//! a table for a person at a terminal; and the private key of a new key,
//! into the file claimed for it or onto stdout.

use std::io::IsTerminal;

use serde_json::Value;

use crate::cli::stdout::{print, Unwritten};
use crate::secret_file::SecretFile;

/// JSON or a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Style {
    Json,
    Table,
}

impl Style {
    /// JSON when asked for or when stdout is not a terminal.
    pub(super) fn pick(json: bool) -> Style {
        if json || !std::io::stdout().is_terminal() {
            Style::Json
        } else {
            Style::Table
        }
    }
}

/// The `PublicKey` JSON of a stored key.
pub(super) fn public_view(r: &crate::keys::PublicKeyRecord) -> Value {
    serde_json::to_value(crate::keys::KeyView::new(r)).expect("a key view always serialises")
}

/// Prints one key (a `PublicKey`).
pub(super) fn key(style: Style, key: &Value) -> Result<(), Unwritten> {
    match style {
        Style::Json => print(pretty(key) + "\n"),
        Style::Table => print(card(key)),
    }
}

/// Prints a list of keys (`{"keys": […]}`).
pub(super) fn keys(style: Style, list: &Value) -> Result<(), Unwritten> {
    match style {
        Style::Json => print(pretty(list) + "\n"),
        Style::Table => print(table(list["keys"].as_array().map_or(&[][..], |k| k))),
    }
}

/// A new key whose private key could not be handed over: the command
/// deletes the key again (nobody could ever sign with it), then reports.
#[derive(Debug)]
struct NotHandedOver {
    id: String,
    org: String,
    /// Where the private key was to go.
    to: String,
    error: std::io::Error,
}

impl NotHandedOver {
    /// The error to report once the command has tried to delete the key
    /// (`deleted`: whether that worked, or why not).
    fn reported(self, deleted: Result<(), String>) -> anyhow::Error {
        let NotHandedOver { id, org, to, error } = self;
        match deleted {
            Ok(()) => anyhow::anyhow!(
                "the private key of new key {id} did not reach {to}: {error}. The key was deleted again, so no key is left that nobody holds: make room (or read the output) and run the command again"
            ),
            Err(why) => anyhow::anyhow!(
                "KEY LOST: key {id} of organisation {org} was made, but its private key did not reach {to}: {error}, and deleting the key again failed too ({why}). Nobody holds that private key: delete the key (signet keys delete --org {org} {id})"
            ),
        }
    }
}

/// Hands a new key over with [`issued`]. A key whose private key reached
/// nobody is deleted again (`delete_again`), and the error says whether
/// that worked: a command never leaves a key that nobody holds unsaid.
pub(super) async fn hand_over<D>(
    style: Style,
    set: Value,
    out: Option<SecretFile>,
    delete_again: impl FnOnce() -> D,
) -> anyhow::Result<()>
where
    D: std::future::Future<Output = Result<(), String>>,
{
    match issued(style, set, out) {
        Ok(printed) => Ok(printed?),
        Err(lost) => Err(lost.reported(delete_again().await)),
    }
}

/// Prints a new key's `SigningKeySet`, or writes its private key into
/// `out` (claimed before the key was made) and prints the rest. A private
/// key that reached neither is [`NotHandedOver`]; once it has, output that
/// cannot be written is an error that says where the private key went.
fn issued(
    style: Style,
    mut set: Value,
    out: Option<SecretFile>,
) -> Result<anyhow::Result<()>, NotHandedOver> {
    let lost = |to: String, error: std::io::Error, set: &Value| NotHandedOver {
        id: set["id"].as_str().unwrap_or("?").to_owned(),
        org: set["organisationId"].as_str().unwrap_or("?").to_owned(),
        to,
        error,
    };
    let private = match set.as_object_mut().and_then(|o| o.remove("privateKey")) {
        Some(Value::String(pem)) => zeroize::Zeroizing::new(pem),
        _ => {
            let missing = std::io::Error::other("the new key came without its private key");
            return Err(lost("this command".into(), missing, &set));
        }
    };
    match out {
        Some(file) => {
            let path = file.path().to_owned();
            if let Err(e) = file.fill(private.as_bytes()) {
                return Err(lost(path.display().to_string(), e, &set));
            }
            eprintln!("private key written to {}", path.display());
            Ok(key(style, &set).map_err(|e| {
                let id = set["id"].as_str().unwrap_or("?");
                anyhow::Error::new(e).context(format!(
                    "key {id} was made and its private key written to {}",
                    path.display()
                ))
            }))
        }
        None => {
            let text = zeroize::Zeroizing::new(match style {
                Style::Json => {
                    let mut with = set.clone();
                    with["privateKey"] = Value::String(private.to_string());
                    pretty(&with) + "\n"
                }
                Style::Table => format!(
                    "{}\nprivate key (shown this once; signet does not keep it, save it now):\n{}",
                    card(&set),
                    private.as_str()
                ),
            });
            match print(text.as_bytes()) {
                Ok(()) => Ok(Ok(())),
                Err(Unwritten(e)) => Err(lost("standard output".into(), e, &set)),
            }
        }
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("a value always serialises")
}

/// A field as one line of text; control characters (which a hostile
/// server could send to drive the terminal) shown as `?`.
fn text(v: &Value) -> String {
    let s = match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn algorithm(k: &Value) -> String {
    match k["bits"].as_u64() {
        Some(bits) => format!("{} ({bits} bits)", text(&k["algorithm"])),
        None => text(&k["algorithm"]),
    }
}

/// One key, a field a line.
fn card(k: &Value) -> String {
    let expires = match &k["expiresAt"] {
        Value::Null => "never".to_owned(),
        v => text(v),
    };
    let rows = [
        ("id", text(&k["id"])),
        ("organisation", text(&k["organisationId"])),
        ("name", text(&k["name"])),
        ("algorithm", algorithm(k)),
        ("state", text(&k["state"])),
        ("origin", text(&k["origin"])),
        ("created", text(&k["createdAt"])),
        ("expires", expires),
    ];
    rows.iter()
        .map(|(label, value)| format!("{:<14}{value}\n", format!("{label}:")))
        .collect()
}

/// Keys as a table with a header row, columns padded to their widest cell.
fn table(keys: &[Value]) -> String {
    if keys.is_empty() {
        return "no keys\n".to_owned();
    }
    let header = [
        "ID",
        "ORGANISATION",
        "NAME",
        "ALGORITHM",
        "STATE",
        "ORIGIN",
        "CREATED",
        "EXPIRES",
    ];
    let rows: Vec<[String; 8]> = keys
        .iter()
        .map(|k| {
            [
                text(&k["id"]),
                text(&k["organisationId"]),
                text(&k["name"]),
                algorithm(k),
                text(&k["state"]),
                text(&k["origin"]),
                text(&k["createdAt"]),
                text(&k["expiresAt"]),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            s.push_str(cell);
            if i + 1 < cells.len() {
                let pad = w - cell.chars().count() + 2;
                s.push_str(&" ".repeat(pad));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(name: &str) -> Value {
        json!({"id": "01JD0000000000000000000000", "organisationId": "acme",
               "name": name, "algorithm": "RS256", "bits": 2048,
               "state": "active", "origin": "generated",
               "createdAt": "2026-11-22T15:25:23Z", "expiresAt": null})
    }

    #[test]
    fn a_table_lines_up_its_columns() {
        let t = table(&[sample("a"), sample("a much longer name")]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        let at = |l: &str| l.find("RS256").or_else(|| l.find("ALGORITHM")).unwrap();
        assert_eq!(at(lines[0]), at(lines[1]), "{t}");
        assert_eq!(at(lines[1]), at(lines[2]), "{t}");
        assert!(lines[1].contains("RS256 (2048 bits)"));
        assert!(
            lines[1].trim_end().ends_with('-'),
            "no expiry shows as -: {t}"
        );
    }

    #[test]
    fn control_characters_from_a_server_never_reach_the_terminal() {
        let t = table(&[sample("evil\u{1b}[2J\u{7}")]);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        let c = card(&sample("evil\u{1b}]0;title\u{7}"));
        assert!(!c.chars().any(|c| c.is_control() && c != '\n'), "{c:?}");
        assert!(c.contains("expires:      never"), "{c}");
    }

    #[test]
    fn an_empty_list_says_so() {
        assert_eq!(table(&[]), "no keys\n");
    }
}
