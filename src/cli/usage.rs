//! clap's refusals of a command line, as one line that names what the
//! person typed: the option, or the environment variable a value came from.

use std::ffi::OsString;

use clap::Command;
use clap::error::{ContextKind, ContextValue, ErrorKind};

/// clap's message for a rejected command line, as one line. A value that
/// came from the environment is blamed on its variable, not on the option
/// the person never typed.
pub(super) fn one_line(error: &clap::Error, command: &Command, args: &[OsString]) -> String {
    let rendered = error.render().to_string();
    let mut line = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("; ");
    if let Some((shown, variable)) = from_environment(error, command, args) {
        line = line.replace(
            &format!("'{shown}'"),
            &format!("environment variable {variable}"),
        );
    }
    line.push_str(" (replication-serve --help lists the options)");
    line
}

/// For an invalid value: the option as clap shows it (`--port <PORT>`) and
/// the environment variable the value came from, when it was not on the
/// command line.
fn from_environment(
    error: &clap::Error,
    command: &Command,
    args: &[OsString],
) -> Option<(String, String)> {
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation | ErrorKind::InvalidUtf8
    ) {
        return None;
    }
    let Some(ContextValue::String(shown)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = shown.strip_prefix("--")?.split([' ', '=']).next()?;
    let arg = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))?;
    let typed = args.iter().skip(1).any(|a| {
        let a = a.to_string_lossy();
        a == format!("--{long}")
            || a.starts_with(&format!("--{long}="))
            || arg
                .get_short()
                .is_some_and(|s| a.starts_with(&format!("-{s}")) && !a.starts_with("--"))
    });
    let variable = arg.get_env()?.to_string_lossy().into_owned();
    (!typed && std::env::var_os(&variable).is_some()).then(|| (shown.clone(), variable))
}
