//! `sluice config plan`: what applying a config file would change in a running gateway, from the
//! two configurations as [`Shown`](super::Shown) shows them (secrets masked, fingerprinted).
//!
//! Sources, endpoints and plugins are matched by name (added, removed, or changed with the keys
//! that changed); routes, which have no name, by their place in the list; every other section key
//! by key. Warnings say what a change would do to traffic: deliveries waiting for an endpoint
//! that goes, a secret that changes with no `previous_secrets` to bridge receivers over.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// The sections a config reload applies; a change anywhere else needs a restart (the listen
/// address, the queue's store and shards, history, the admin token, alerts, the Wasm engine...).
pub const RELOADABLE: [&str; 5] = ["endpoints", "plugins", "retry", "routes", "sources"];

/// What a plan line of a key that only a restart applies ends with.
const RESTART: &str = " (needs a restart)";

/// The lists whose entries have a `name`.
const NAMED: [(&str, &str); 3] = [("sources", "source"), ("endpoints", "endpoint"), ("plugins", "plugin")];

/// What would change.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// One line per change, section by section in alphabetical order.
    pub changes: Vec<String>,
    /// What the changes would do to traffic.
    pub warnings: Vec<String>,
}

impl Plan {
    /// The plan as printed, a line each: changes marked `+` added, `-` removed, `~` changed; then
    /// the warnings, marked `!`. A plan of no shown change says that something unshown changed.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.changes.is_empty() {
            out.push_str("  ~ secrets or values that are not shown changed (the configuration's hash differs)\n");
        }
        for change in &self.changes {
            let mark = match change.split(' ').next() {
                Some("added") => '+',
                Some("removed") => '-',
                _ => '~',
            };
            out.push_str(&format!("  {mark} {change}\n"));
        }
        if !self.warnings.is_empty() {
            out.push_str("warnings:\n");
            for warning in &self.warnings {
                out.push_str(&format!("  ! {warning}\n"));
            }
        }
        out
    }
}

/// Facts about the running gateway that warnings count with.
#[derive(Debug, Default)]
pub struct Running {
    /// Deliveries parked per endpoint (disabled), by name.
    pub paused: Vec<(String, u64)>,
}

/// The plan from the `running` configuration to the `proposed` one (both as shown).
pub fn plan(running: &Value, proposed: &Value, facts: &Running) -> Plan {
    let mut plan = Plan::default();
    let empty = Map::new();
    let (old, new) = (running.as_object().unwrap_or(&empty), proposed.as_object().unwrap_or(&empty));
    let sections: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for section in sections {
        let (a, b) = (old.get(section).unwrap_or(&Value::Null), new.get(section).unwrap_or(&Value::Null));
        if let Some((_, what)) = NAMED.iter().find(|(list, _)| list == section) {
            named(what, a, b, facts, &mut plan);
        } else if section == "routes" {
            routes(a, b, &mut plan);
        } else {
            let mut keys = Vec::new();
            changed_keys(section, a, b, &mut keys);
            let restart = if RELOADABLE.contains(&section.as_str()) { "" } else { RESTART };
            plan.changes
                .extend(keys.into_iter().map(|(key, from, to)| format!("changed `{key}`: {from} → {to}{restart}")));
        }
    }
    plan
}

/// The changes from `running` to `proposed` (both as shown) that a reload cannot apply, one line
/// per key (`queue.shards`: 1 → 4); empty when a reload can apply every change.
pub fn needs_restart(running: &Value, proposed: &Value) -> Vec<String> {
    let empty = Map::new();
    let (old, new) = (running.as_object().unwrap_or(&empty), proposed.as_object().unwrap_or(&empty));
    let sections: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut keys = Vec::new();
    for section in sections.into_iter().filter(|s| !RELOADABLE.contains(&s.as_str())) {
        let (a, b) = (old.get(section).unwrap_or(&Value::Null), new.get(section).unwrap_or(&Value::Null));
        changed_keys(section, a, b, &mut keys);
    }
    keys.into_iter().map(|(key, from, to)| format!("`{key}`: {from} → {to}")).collect()
}

fn named(what: &str, old: &Value, new: &Value, facts: &Running, plan: &mut Plan) {
    let by_name = |list: &Value| -> Vec<(String, Value)> {
        list.as_array()
            .map(|items| {
                items.iter().map(|item| (item["name"].as_str().unwrap_or_default().to_string(), item.clone())).collect()
            })
            .unwrap_or_default()
    };
    let (old, new) = (by_name(old), by_name(new));
    for (name, item) in &old {
        match new.iter().find(|(n, _)| n == name) {
            None => {
                plan.changes.push(format!("removed {what} `{name}`"));
                if what == "endpoint" {
                    let paused = facts.paused.iter().find(|(n, _)| n == name).map_or(0, |(_, count)| *count);
                    plan.warnings.push(format!(
                        "endpoint `{name}` removed: its pending deliveries ({paused} of them paused) are no longer \
                         attempted by gateways on the new config; they wait for the endpoint to come back"
                    ));
                }
            }
            Some((_, now)) => {
                let mut keys = Vec::new();
                changed_keys("", item, now, &mut keys);
                if !keys.is_empty() {
                    let names: Vec<String> = keys.iter().map(|(k, _, _)| format!("`{k}`")).collect();
                    plan.changes.push(format!("changed {what} `{name}`: {}", names.join(", ")));
                }
                if what == "endpoint" && item["secret"] != now["secret"] && !holds_secret(now, &item["secret"]) {
                    plan.warnings.push(format!(
                        "endpoint `{name}`: its secret changes and the old one is not in `previous_secrets`; receivers \
                         still verifying with it reject deliveries until they switch"
                    ));
                }
            }
        }
    }
    for (name, _) in new.iter().filter(|(name, _)| !old.iter().any(|(n, _)| n == name)) {
        plan.changes.push(format!("added {what} `{name}`"));
    }
}

/// Whether `endpoint`'s `previous_secrets` hold the secret shown as `secret`.
fn holds_secret(endpoint: &Value, secret: &Value) -> bool {
    endpoint["previous_secrets"].as_array().is_some_and(|list| list.iter().any(|p| &p["secret"] == secret))
}

fn routes(old: &Value, new: &Value, plan: &mut Plan) {
    let none = Vec::new();
    let (old, new) = (old.as_array().unwrap_or(&none), new.as_array().unwrap_or(&none));
    let describe =
        |route: &Value| format!("source `{}` → {}", route["source"].as_str().unwrap_or("?"), route["endpoints"]);
    for i in 0..old.len().max(new.len()) {
        match (old.get(i), new.get(i)) {
            (Some(a), Some(b)) => {
                let mut keys = Vec::new();
                changed_keys("", a, b, &mut keys);
                plan.changes.extend(
                    keys.into_iter().map(|(key, from, to)| format!("changed `routes[{i}].{key}`: {from} → {to}")),
                );
            }
            (Some(a), None) => plan.changes.push(format!("removed routes[{i}] ({})", describe(a))),
            (None, Some(b)) => plan.changes.push(format!("added routes[{i}] ({})", describe(b))),
            (None, None) => {}
        }
    }
}

/// The keys under `at` whose values differ, with both values (`(key, from, to)`).
fn changed_keys(at: &str, old: &Value, new: &Value, out: &mut Vec<(String, String, String)>) {
    let join = |key: &str| if at.is_empty() { key.to_string() } else { format!("{at}.{key}") };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                changed_keys(&join(key), a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null), out);
            }
        }
        (a, b) if a != b => out.push((at.to_string(), short(a), short(b))),
        _ => {}
    }
}

/// A value in a change line: absent values say so, long ones are cut.
fn short(value: &Value) -> String {
    let text = match value {
        Value::Null => return "(none)".to_string(),
        other => other.to_string(),
    };
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::{needs_restart, plan, Running};
    use crate::config::{from_toml, Shown};

    const BASE: &str = r#"
[queue]
batch = 100
[[endpoints]]
name = "billing"
url = "https://example.com/billing"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
[[endpoints]]
name = "crm"
url = "https://example.com/crm"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
[[routes]]
source = "shop"
endpoints = ["billing", "crm"]
"#;

    fn shown(text: &str) -> serde_json::Value {
        Shown::of(&from_toml(text).unwrap()).config
    }

    #[test]
    fn the_same_config_plans_nothing() {
        assert_eq!(plan(&shown(BASE), &shown(BASE), &Running::default()), Default::default());
    }

    #[test]
    fn added_removed_and_changed_entries_are_named_with_their_keys_and_warnings_count() {
        let proposed = BASE
            .replace("batch = 100", "batch = 200")
            .replace(
                "name = \"crm\"\nurl = \"https://example.com/crm\"",
                "name = \"audit\"\nurl = \"https://example.com/audit\"",
            )
            .replace("endpoints = [\"billing\", \"crm\"]", "endpoints = [\"billing\", \"audit\"]")
            .replace(
                "https://example.com/billing\"\nsecret = \"whsec_MfKQ9r8G",
                "https://example.com/billing2\"\nsecret = \"whsec_AfKQ9r8G",
            );
        let facts = Running { paused: vec![("crm".into(), 1204)] };
        let plan = plan(&shown(BASE), &shown(&proposed), &facts);
        assert!(plan.changes.contains(&"changed `queue.batch`: 100 → 200 (needs a restart)".to_string()), "{plan:?}");
        assert!(plan.changes.contains(&"removed endpoint `crm`".to_string()), "{plan:?}");
        assert!(plan.changes.contains(&"added endpoint `audit`".to_string()), "{plan:?}");
        assert!(plan.changes.contains(&"changed endpoint `billing`: `secret`, `url`".to_string()), "{plan:?}");
        assert!(plan.changes.iter().any(|c| c.starts_with("changed `routes[0].endpoints`")), "{plan:?}");
        assert!(plan.warnings.iter().any(|w| w.contains("endpoint `crm` removed") && w.contains("1204")), "{plan:?}");
        assert!(plan.warnings.iter().any(|w| w.contains("endpoint `billing`: its secret changes")), "{plan:?}");
    }

    #[test]
    fn only_keys_outside_the_reloadable_sections_need_a_restart() {
        let proposed = BASE
            .replace("batch = 100", "batch = 100\nshards = 4")
            .replace("endpoints = [\"billing\", \"crm\"]", "endpoints = [\"billing\"]")
            + "[retry]\njitter = 0.5\n";
        assert_eq!(needs_restart(&shown(BASE), &shown(&proposed)), vec!["`queue.shards`: 1 → 4".to_string()]);
        assert!(needs_restart(&shown(BASE), &shown(&BASE.replace("crm\"]", "crm\", \"billing\"]"))).is_empty());
    }
}
