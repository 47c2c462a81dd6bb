//! Loading the configuration (built-in defaults → TOML file → `SLUICE_*` environment) and reporting
//! every problem of a file in one pass.
//!
//! serde stops at the first key it cannot take, so one extraction shows one problem. [`report`]
//! goes on: it takes the merged values (defaults, file, environment) as they are, extracts the
//! configuration from them, and at each problem notes it (with the key's path, and the file and line
//! it comes from, or the environment variable) and leaves that key out, until what remains extracts.
//! The semantic checks ([`Config::validate`]) then run on what remains, so `sluice check` lists a
//! bad duration, a misspelt key and an unknown route target in the same run.

use std::path::Path;

use figment::error::Kind;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Value;
use figment::Figment;

use super::{Config, ConfigError};

/// Most problems of one file reported before giving up on the rest of it.
const MOST_PROBLEMS: usize = 100;

/// A configuration read as far as it goes.
#[derive(Debug)]
pub struct Report {
    /// The configuration, with every key that had a problem left out (its default in its place; a
    /// list entry that missed a required key is left out whole). `None` when the file could not be
    /// read or parsed at all.
    pub config: Option<Config>,
    /// Every problem of loading (unknown keys, wrong types and values), each once, in the file's
    /// order where it is known.
    pub problems: Vec<String>,
}

/// Loads the configuration: built-in defaults, then the TOML file (if given), then `SLUICE_*`
/// environment variables (`SLUICE_SERVER__LISTEN` overrides `server.listen`). Relative plugin paths
/// are resolved against the file's directory. Every loading problem is reported at once.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let report = report(path);
    match report.config {
        Some(config) if report.problems.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid(report.problems)),
    }
}

/// Parses a configuration from TOML text alone (no file, no environment); for tests and tools.
pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
    Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::string(text))
        .extract()
        .map_err(|e| ConfigError::Load(Box::new(e)))
}

/// Reads the configuration as [`load`] does, going past each problem to find the next.
pub fn report(path: Option<&Path>) -> Report {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    let mut text = None;
    if let Some(path) = path {
        match std::fs::read_to_string(path) {
            Ok(read) => text = Some(read),
            Err(e) => {
                let problem = format!("config file {}: {e}", path.display());
                return Report { config: None, problems: vec![problem] };
            }
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    let figment = figment.merge(Env::prefixed("SLUICE_").split("__"));
    let (lines, not_toml) = match text.as_deref().map(LineFinder::new) {
        Some((lines, error)) => (Some(lines), error),
        None => (None, None),
    };
    if let (Some(path), Some(e), Some(lines)) = (path, not_toml, lines.as_ref()) {
        // Not TOML at all: nothing past this can be read.
        let at = e.span().map(|s| format!(", line {}", lines.line_of(s.start))).unwrap_or_default();
        let message = e.message().trim_end();
        return Report { config: None, problems: vec![format!("{}{at}: not valid TOML: {message}", path.display())] };
    }
    let mut values = match figment.extract::<Value>() {
        Ok(values) => values,
        Err(e) => return Report { config: None, problems: e.into_iter().map(|e| e.to_string()).collect() },
    };
    let mut problems: Vec<(Option<usize>, String)> = Vec::new();
    let config = loop {
        match Figment::from(Serialized::defaults(&values)).extract::<Config>() {
            Ok(config) => break Some(config),
            Err(errors) => {
                let mut progressed = false;
                for error in errors {
                    // The key to leave out, and the one to name: an unknown key is named by
                    // the table it is in (its own name is in the message).
                    let (key, shown, left_out) = match &error.kind {
                        Kind::UnknownField(field, _) => {
                            let mut key = error.path.clone();
                            if key.last() != Some(field) {
                                key.push(field.clone());
                            }
                            let table = key[..key.len() - 1].to_vec();
                            (key, table, "")
                        }
                        Kind::MissingField(_) => {
                            (error.path.clone(), error.path.clone(), " (left out of the checks that follow)")
                        }
                        _ => (error.path.clone(), error.path.clone(), ""),
                    };
                    let name = key.join(".");
                    let (line, from) = source_of(&figment, &name, path, lines.as_ref());
                    let problem = format!("{}: {}{left_out}{from}", display_key(&shown), describe(&error.kind));
                    if !problems.iter().any(|(_, p)| *p == problem) {
                        problems.push((line, problem));
                    }
                    progressed |= !key.is_empty() && remove(&mut values, &key);
                }
                if !progressed || problems.len() >= MOST_PROBLEMS {
                    break None;
                }
            }
        }
    };
    // In the file's order (what has no line, from the environment, last), as a reader fixes them.
    problems.sort_by_key(|(line, _)| line.unwrap_or(usize::MAX));
    let config = config.map(|mut config| {
        resolve_paths(&mut config, path);
        config
    });
    Report { config, problems: problems.into_iter().map(|(_, p)| p).collect() }
}

/// Relative plugin and store paths, against the directory of the config file, made absolute: a
/// gateway started as `--config sluice.toml` and a `config plan` run as `--config
/// /etc/sluice/sluice.toml` name the same plugin the same way.
fn resolve_paths(config: &mut Config, path: Option<&Path>) {
    let Some(dir) = path.and_then(Path::parent) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    for plugin in &mut config.plugins {
        if plugin.path.is_relative() {
            plugin.path = dir.join(&plugin.path);
        }
        if let Some(shadow) = plugin.shadow.as_mut().filter(|p| p.is_relative()) {
            *shadow = dir.join(&*shadow);
        }
    }
    if let Some(store) = config.queue.path.as_mut().filter(|p| p.is_relative()) {
        *store = dir.join(&*store);
    }
}

/// A key's path as the rest of the checks write it: `endpoints[0].url`.
fn display_key(key: &[String]) -> String {
    let mut out = String::new();
    for part in key {
        if part.bytes().all(|b| b.is_ascii_digit()) && !part.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    if out.is_empty() {
        out.push_str("(top level)");
    }
    out
}

/// What is wrong, in words (figment's own, without the key and source it appends).
fn describe(kind: &Kind) -> String {
    match kind {
        Kind::UnknownField(field, expected) if !expected.is_empty() => {
            let close = expected.iter().find(|e| similar(field, e));
            match close {
                Some(close) => format!("unknown key `{field}` (did you mean `{close}`?)"),
                None => format!("unknown key `{field}`; expected one of {}", expected.join(", ")),
            }
        }
        Kind::UnknownField(field, _) => format!("unknown key `{field}`"),
        Kind::MissingField(field) => format!("missing key `{field}`"),
        other => other.to_string(),
    }
}

/// Whether `a` looks like a misspelling of `b`: one letter added, dropped or changed, or a prefix.
fn similar(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count();
    prefix + suffix >= a.len().max(b.len()) - 1
}

/// Where the value at `name` came from: its line in the file, and the words to say so.
fn source_of(
    figment: &Figment,
    name: &str,
    path: Option<&Path>,
    lines: Option<&LineFinder>,
) -> (Option<usize>, String) {
    let env = format!("SLUICE_{}", name.replace('.', "__").to_uppercase());
    let from_file = figment.find_metadata(name).and_then(|m| m.source.as_ref()).and_then(|s| s.file_path()).is_some();
    match path {
        Some(path) if from_file || std::env::var_os(&env).is_none() => {
            let line = lines.and_then(|l| l.line_of_key(name));
            let at = line.map(|n| format!(", line {n}")).unwrap_or_default();
            (line, format!(" (in {}{at})", path.display()))
        }
        _ if std::env::var_os(&env).is_some() => (None, format!(" (from the environment: {env})")),
        _ => (None, String::new()),
    }
}

/// Takes the key at `path` out of `values`; whether it was there.
fn remove(values: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let mut at = values;
    for part in parents {
        at = match at {
            Value::Dict(_, dict) => match dict.get_mut(part) {
                Some(next) => next,
                None => return false,
            },
            Value::Array(_, items) => match part.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(next) => next,
                None => return false,
            },
            _ => return false,
        };
    }
    match at {
        Value::Dict(_, dict) => dict.remove(last).is_some(),
        Value::Array(_, items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Lines of keys in the file's text, from its parse with spans.
struct LineFinder<'a> {
    text: &'a str,
    table: Option<toml::Spanned<toml::de::DeTable<'a>>>,
}

impl<'a> LineFinder<'a> {
    /// The lines of `text`, and its parse error when it is not TOML.
    fn new(text: &'a str) -> (Self, Option<toml::de::Error>) {
        match toml::de::DeTable::parse(text) {
            Ok(table) => (Self { text, table: Some(table) }, None),
            Err(e) => (Self { text, table: None }, Some(e)),
        }
    }

    /// The 1-based line of byte `offset`.
    fn line_of(&self, offset: usize) -> usize {
        self.text.as_bytes()[..offset.min(self.text.len())].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// The line of the deepest part of dotted `key` (`endpoints.0.url`) the file holds.
    fn line_of_key(&self, key: &str) -> Option<usize> {
        let mut table: Option<&toml::de::DeTable<'a>> = Some(self.table.as_ref()?.get_ref());
        let mut array: Option<&toml::de::DeArray<'a>> = None;
        let mut found = None;
        for part in key.split('.') {
            let next = match (table, array) {
                (Some(t), _) => t.iter().find(|(k, _)| k.get_ref().as_ref() == part).map(|(k, v)| (k.span(), v)),
                (None, Some(a)) => part.parse::<usize>().ok().and_then(|i| a.get(i)).map(|v| (v.span(), v)),
                (None, None) => None,
            };
            let Some((span, value)) = next else { break };
            found = Some(span.start);
            (table, array) = match value.get_ref() {
                toml::de::DeValue::Table(t) => (Some(t), None),
                toml::de::DeValue::Array(a) => (None, Some(a)),
                _ => (None, None),
            };
        }
        found.map(|offset| self.line_of(offset))
    }
}

#[cfg(test)]
mod tests {
    use super::{display_key, similar, LineFinder};

    #[test]
    fn keys_are_found_on_their_lines_and_written_as_the_checks_write_them() {
        let text = "[server]\nlisten = \"x\"\n\n[[endpoints]]\nname = \"a\"\n\n[[endpoints]]\nname = \"b\"\nurl = 1\n";
        let (lines, error) = LineFinder::new(text);
        assert!(error.is_none());
        assert_eq!(lines.line_of_key("server.listen"), Some(2));
        assert_eq!(lines.line_of_key("endpoints.1.url"), Some(9));
        assert_eq!(lines.line_of_key("server.nothing"), Some(1), "the closest part the file has");
        assert_eq!(display_key(&["endpoints".into(), "1".into(), "url".into()]), "endpoints[1].url");
        assert!(similar("max_body_byte", "max_body_bytes"));
        assert!(!similar("listen", "max_body_bytes"));
    }
}
