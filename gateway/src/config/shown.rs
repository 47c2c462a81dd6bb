//! The configuration as the admin API shows it (`GET /v1/config`) and as `sluice config plan`
//! compares it: every key, secrets masked, and a content hash.
//!
//! A masked secret reads `***` followed by a short fingerprint of it (`***sha256:1a2b3c4d`), so a
//! plan can tell that a secret changed without either side showing it. Credentials inside URLs
//! (passwords, token-like query parameters) are masked the way log lines mask them. The hash is
//! over the whole configuration, secrets included: any change, secret or not, changes it.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Config;

/// The configuration shown: the masked keys and the content hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    /// Every key of the configuration, secrets masked.
    pub config: Value,
    /// `sha256:<hex>` of the whole configuration, secrets included.
    pub hash: String,
}

impl Shown {
    /// `config` shown.
    pub fn of(config: &Config) -> Self {
        let whole = serde_json::to_value(config).unwrap_or(Value::Null);
        let hash = format!("sha256:{}", hex(&Sha256::digest(canonical(&whole).as_bytes())));
        let mut masked = whole;
        mask(&mut masked);
        Self { config: masked, hash }
    }

    /// The JSON body of `GET /v1/config`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({ "hash": self.hash, "config": self.config })
    }
}

/// Keys whose values are secrets wherever they appear.
const SECRET_KEYS: [&str; 2] = ["secret", "token"];
/// Keys whose values are URLs that may carry credentials.
const URL_KEYS: [&str; 3] = ["url", "postgres_url", "cluster_nodes"];

fn mask(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if SECRET_KEYS.contains(&key.as_str()) {
                    if let Value::String(secret) = item {
                        *item = Value::String(fingerprint(secret));
                    }
                } else if URL_KEYS.contains(&key.as_str()) {
                    mask_urls(item);
                } else {
                    mask(item);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

fn mask_urls(value: &mut Value) {
    match value {
        Value::String(url) => *url = crate::redact::url_text(url),
        Value::Array(items) => items.iter_mut().for_each(mask_urls),
        _ => {}
    }
}

/// `***sha256:<first 8 hex digits>` of a secret.
fn fingerprint(secret: &str) -> String {
    format!("{}sha256:{}", crate::redact::MASK, &hex(&Sha256::digest(secret.as_bytes()))[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// JSON text with object keys sorted, so the hash does not depend on field order.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let items: Vec<String> =
                keys.iter().map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&map[*k]))).collect();
            format!("{{{}}}", items.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::Shown;

    #[test]
    fn secrets_are_masked_with_a_fingerprint_and_any_change_moves_the_hash() {
        let text = r#"
[admin]
token = "an-admin-token-long-enough"
[redis]
url = "redis://:hunter2@127.0.0.1:6379"
[[endpoints]]
name = "billing"
url = "https://example.com/hook?token=abc"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#;
        let config = crate::config::from_toml(text).unwrap();
        let shown = Shown::of(&config);
        let json = shown.to_json().to_string();
        for secret in ["an-admin-token-long-enough", "hunter2", "abc", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] {
            assert!(!json.contains(secret), "{secret} shown in {json}");
        }
        let endpoint_secret = shown.config["endpoints"][0]["secret"].as_str().unwrap();
        assert!(endpoint_secret.starts_with("***sha256:") && endpoint_secret.len() == 18, "{endpoint_secret}");
        assert_eq!(shown.config["endpoints"][0]["name"], "billing");

        let rotated = crate::config::from_toml(&text.replace("MfKQ9r8G", "AfKQ9r8G")).unwrap();
        let rotated = Shown::of(&rotated);
        assert_ne!(rotated.hash, shown.hash);
        assert_ne!(rotated.config["endpoints"][0]["secret"], shown.config["endpoints"][0]["secret"]);
        assert_eq!(Shown::of(&config).hash, shown.hash, "the same config, the same hash");
    }
}
