//! Secrets that must never reach a log line, an error message or an email.

use std::fmt;

/// A string whose `Debug` and `Display` print a mask.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Masks anything in `text` that looks like a vault token or a JWT, for child output that
/// is about to be logged, stored or emailed.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if looks_like_token(word) {
            out.push_str("***");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_alphanumeric() || "._-+/=".contains(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Whether `word` has the shape of a Vault/OpenBao token (`hvs.…`, `s.…`) or a JWT.
pub fn looks_like_token(word: &str) -> bool {
    let long_tail = |rest: &str| rest.len() >= 16 && !rest.contains('/');
    word.strip_prefix("hvs.").is_some_and(long_tail)
        || word.strip_prefix("hvb.").is_some_and(long_tail)
        || word.strip_prefix("s.").is_some_and(long_tail)
        || (word.starts_with("eyJ") && word.matches('.').count() >= 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_tokens_in_text() {
        let text =
            "token s.AbCdEfGhIjKlMnOpQrSt and hvs.CAESIJ1234567890abcdef, jwt eyJa.eyJb.sig ok";
        assert_eq!(scrub(text), "token *** and ***, jwt *** ok");
        assert_eq!(
            scrub("see s.short and /tmp/vt_u0"),
            "see s.short and /tmp/vt_u0"
        );
        assert_eq!(format!("{:?}", Secret::new("x")), "\"***\"");
    }
}
