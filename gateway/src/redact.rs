//! Keeping credentials out of logs, alerts and `Debug` output: URLs lose their password and the
//! values of query parameters that look like credentials; secrets and tokens print as `***`.

use std::fmt;

use url::Url;

/// What stands in for a hidden value.
pub const MASK: &str = "***";

/// Query parameter names (lower case, matched as substrings) whose values are credentials.
const CREDENTIAL_PARAMS: [&str; 9] = ["token", "key", "secret", "pass", "sig", "auth", "credential", "code", "session"];

/// `url` fit for a log line or an alert: the password (and a username with it) masked, and the
/// value of each query parameter named like a credential (`token`, `api_key`, `sig`, …) masked.
pub fn url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some(MASK));
    }
    if shown.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let lower = name.to_ascii_lowercase();
                let hidden = CREDENTIAL_PARAMS.iter().any(|c| lower.contains(c));
                (name.into_owned(), if hidden { MASK.to_string() } else { value.into_owned() })
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// [`url`] for a URL given as text (e.g. a Redis URL): unparsable text is hidden whole.
pub fn url_text(text: &str) -> String {
    Url::parse(text).map(|u| url(&u)).unwrap_or_else(|_| MASK.to_string())
}

/// Prints as `***` (or `None`): for secrets in `Debug` output.
pub struct Hidden<'a, T>(pub &'a Option<T>);

impl<T> fmt::Debug for Hidden<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str(MASK),
            None => f.write_str("None"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_credential_parameters_are_masked() {
        let shown = url(&Url::parse("https://bob:hunter2@hooks.example.com/in?api_key=k1&region=eu&sig=abc").unwrap());
        assert_eq!(shown, "https://bob:***@hooks.example.com/in?api_key=***&region=eu&sig=***");
        let plain = "https://hooks.example.com/in?region=eu";
        assert_eq!(url(&Url::parse(plain).unwrap()), plain);
        assert_eq!(url_text("redis://:pw@127.0.0.1:6379/0"), "redis://:***@127.0.0.1:6379/0");
        assert_eq!(url_text("not a url with a secret"), MASK);
    }

    #[test]
    fn config_debug_output_shows_no_secret() {
        let secrets = [
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "admin-token-0123456789",
            "source-token-0123456789",
            "pw-in-redis-url",
            "tok-in-url",
        ];
        let config = crate::config::from_toml(&format!(
            r#"
[redis]
url = "redis://:{}@127.0.0.1:6379/"
[admin]
token = "{}"
[alerts]
url = "https://alerts.example.com/in?token={}"
secret = "{}"
[[sources]]
name = "shop"
token = "{}"
[[endpoints]]
name = "a"
url = "https://u:{}@hooks.example.com/in?token={}"
secret = "{}"
"#,
            secrets[3], secrets[1], secrets[4], secrets[0], secrets[2], secrets[3], secrets[4], secrets[0]
        ))
        .unwrap();
        let shown = format!("{config:?}");
        for secret in secrets {
            assert!(!shown.contains(secret), "{secret} printed in {shown}");
        }
        assert!(shown.contains("hooks.example.com"), "the rest is still there");
    }
}
