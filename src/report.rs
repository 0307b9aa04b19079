//! Errors as one line for a person: the message, then each cause that the
//! message does not already say.
//!
//! The library's errors put their cause into their own message (it is what
//! the person acts on) and also keep it as their `source`, so a reporter
//! that prints the whole chain would repeat it: `cannot use the data
//! directory /x: Permission denied (os error 13): Permission denied (os
//! error 13)`. [`one_line`] walks the chain and adds only what is new.

use std::error::Error;

/// `error` and its causes on one line, each cause once.
pub fn one_line(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let said = e.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = e.source();
    }
    // A message of several lines (a library's) still makes one log line.
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot use the data directory /x: {source}")]
    struct Outer {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start")]
    struct Context(#[source] Outer);

    #[test]
    fn a_cause_the_message_already_says_is_not_repeated() {
        let denied = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let inner = Outer { source: denied() };
        let said = denied().to_string();
        assert_eq!(
            one_line(&inner),
            format!("cannot use the data directory /x: {said}")
        );
        let outer = Context(Outer { source: denied() });
        assert_eq!(
            one_line(&outer),
            format!("cannot start: cannot use the data directory /x: {said}")
        );
    }

    #[test]
    fn several_lines_become_one() {
        let e = std::io::Error::other("first\n\nsecond\n");
        assert_eq!(one_line(&e), "first; second");
    }
}
