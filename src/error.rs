//! Error formatting shared by every module.

use std::fmt;

/// Formats an error with its sources on one line: "a: b: c". Log lines and
/// start-up errors use it so that the cause is never hidden behind a generic
/// top-level message. A source whose text its parent already ends with (as
/// tokio-postgres's "db error: FATAL: .." and deadpool's wrapper print their
/// cause themselves) is not written twice.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut src = self.0.source();
        while let Some(e) = src {
            let text = e.to_string();
            if !shown.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            src = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_source_is_on_the_line() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(Chain(&e).to_string(), "outer: inner");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("wrapper: {0}")]
    struct SaysItsCause(#[source] Outer);

    #[test]
    fn a_source_its_parent_already_printed_is_not_repeated() {
        let e = SaysItsCause(Outer(std::io::Error::other("inner")));
        assert_eq!(Chain(&e).to_string(), "wrapper: outer: inner");
    }
}
