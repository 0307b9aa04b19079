//! The reference servers' single-dash spellings.
//!
//! The reference servers are started as
//! `replication-serve -p 5555 -pwd admin -t 5000 -l INFO -lf server.log`, and
//! existing scripts and add-on launchers pass exactly those tokens. clap only
//! knows one-character short flags, so `-pwd` would read as `-p wd` (a port).
//! [`normalize_args`] therefore rewrites the few legacy multi-letter tokens to
//! their `--long` forms before clap sees the arguments.

use std::ffi::{OsStr, OsString};

use clap::{Arg, Command, CommandFactory};

use super::Cli;

// Long names shared by the clap definition and the legacy table, so a rename
// cannot leave `-pwd` pointing at an option that no longer exists.
pub(super) const LONG_ADMIN_PASSWORD: &str = "admin-password";
pub(super) const LONG_SERVER_PASSWORD: &str = "server-password";
pub(super) const LONG_LOG_FILE: &str = "log-file";

/// Single-dash spellings of the reference servers that clap cannot parse, and
/// the long option each one stands for. Whether an option takes a value is not
/// repeated here: [`normalize_args`] asks the clap definition, so the rewrite
/// and the parser cannot disagree.
const LEGACY_FLAGS: &[(&str, &str)] = &[
    ("-pwd", LONG_ADMIN_PASSWORD),
    ("-apwd", LONG_ADMIN_PASSWORD),
    ("-spwd", LONG_SERVER_PASSWORD),
    ("-lf", LONG_LOG_FILE),
];

/// Rewrites the legacy tokens `-pwd`, `-apwd`, `-spwd` and `-lf` (alone, or as
/// `-pwd=VALUE`) to their long forms, leaving every other argument untouched.
///
/// The rewrite follows the arguments the way clap will read them, so that it
/// never changes a value: the token after an option that takes a value is
/// that option's value (`-pwd -spwd` sets the admin password to `-spwd`),
/// and nothing after a bare `--` is looked at. The first element is the
/// program name and is always kept as is.
pub fn normalize_args<I, T>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut cmd = Cli::command();
    // Building adds the automatic --help and --version, so they are known too.
    cmd.build();

    let mut args = args.into_iter().map(Into::into);
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    let mut value_expected = false;
    while let Some(arg) = args.next() {
        if value_expected {
            value_expected = false;
            out.push(arg);
        } else if arg == "--" {
            out.push(arg);
            out.extend(args.by_ref());
        } else if let Some((long, attached)) = legacy_target(&arg) {
            let mut rewritten = OsString::from(format!("--{long}"));
            match attached {
                Some(value) => {
                    rewritten.push("=");
                    rewritten.push(value);
                }
                None => value_expected = long_takes_value(&cmd, long),
            }
            out.push(rewritten);
        } else {
            value_expected = expects_separate_value(&cmd, &arg.to_string_lossy());
            out.push(arg);
        }
    }
    out
}

/// The long name for a legacy token, with the value when it is attached
/// (`-pwd=VALUE`); `None` when `arg` is not a legacy token.
fn legacy_target(arg: &OsStr) -> Option<(&'static str, Option<OsString>)> {
    let bytes = arg.as_encoded_bytes();
    LEGACY_FLAGS.iter().find_map(|&(token, long)| {
        let rest = bytes.strip_prefix(token.as_bytes())?;
        if rest.is_empty() {
            return Some((long, None));
        }
        if rest.first() == Some(&b'=') {
            // The value may not be UTF-8 (a log file path); when it cannot be
            // split out on this platform the token is left for clap to reject.
            return split_after(arg, token.len() + 1).map(|value| (long, Some(value)));
        }
        None
    })
}

/// The part of `arg` after its first `prefix_len` ASCII characters.
pub(super) fn split_after(arg: &OsStr, prefix_len: usize) -> Option<OsString> {
    if let Some(s) = arg.to_str() {
        return s.get(prefix_len..).map(OsString::from);
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        arg.as_bytes()
            .get(prefix_len..)
            .map(|rest| OsStr::from_bytes(rest).to_owned())
    }
    #[cfg(windows)]
    {
        use std::os::windows::ffi::{OsStrExt, OsStringExt};
        let wide: Vec<u16> = arg.encode_wide().skip(prefix_len).collect();
        Some(OsString::from_wide(&wide))
    }
    #[cfg(not(any(unix, windows)))]
    {
        None
    }
}

/// Whether the token after `arg` will be read by clap as `arg`'s value: `arg`
/// is an option that takes a value and has none attached (`--port`, `-p`, or
/// a cluster of short flags ending in one, like `-hp`).
pub(super) fn expects_separate_value(cmd: &Command, arg: &str) -> bool {
    if let Some(long) = arg.strip_prefix("--") {
        return !long.contains('=') && long_takes_value(cmd, long);
    }
    let Some(shorts) = arg.strip_prefix('-') else {
        return false;
    };
    let mut chars = shorts.chars();
    while let Some(c) = chars.next() {
        let Some(found) = cmd.get_arguments().find(|a| has_short(a, c)) else {
            // clap will reject the unknown flag; nothing to protect.
            return false;
        };
        if found.get_action().takes_values() {
            // clap reads the rest of the cluster as the value, if any.
            return chars.as_str().is_empty();
        }
    }
    false
}

fn long_takes_value(cmd: &Command, long: &str) -> bool {
    cmd.get_arguments()
        .find(|a| has_long(a, long))
        .is_some_and(|a| a.get_action().takes_values())
}

fn has_long(arg: &Arg, long: &str) -> bool {
    arg.get_long() == Some(long) || arg.get_all_aliases().is_some_and(|a| a.contains(&long))
}

fn has_short(arg: &Arg, short: char) -> bool {
    arg.get_short() == Some(short)
        || arg
            .get_all_short_aliases()
            .is_some_and(|a| a.contains(&short))
}

/// The `--help` footer listing the legacy spellings, built from the table
/// that drives the rewrite.
pub(super) fn help() -> String {
    let mut help = String::from("The reference servers' spellings are accepted too:\n");
    for (token, long) in LEGACY_FLAGS {
        help.push_str(&format!("  {token:<6} same as --{long}\n"));
    }
    help
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Action, parse_from};
    use crate::config::Config;

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("replication-serve")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn config_from(args: Vec<OsString>) -> Config {
        match parse_from(args) {
            Ok(Action::Serve(config, _)) => *config,
            Ok(_) => panic!("expected a server configuration"),
            Err(e) => panic!("should parse: {e}"),
        }
    }

    fn config(list: &[&str]) -> Config {
        config_from(args(list))
    }

    #[test]
    fn legacy_targets_exist_and_take_values() {
        let mut cmd = Cli::command();
        cmd.build();
        for (token, long) in LEGACY_FLAGS {
            assert!(long_takes_value(&cmd, long), "{token} -> --{long}");
        }
    }

    #[test]
    fn values_that_look_like_legacy_flags_are_kept() {
        assert_eq!(config(&["--admin-password", "-lf"]).admin_password, "-lf");
        let c = config(&["-pwd", "-spwd"]);
        assert_eq!(c.admin_password, "-spwd");
        assert_eq!(c.server_password, None);
        assert_eq!(
            normalize_args(args(&["-pwd", "-spwd", "-lf", "-pwd"])),
            args(&["--admin-password", "-spwd", "--log-file", "-pwd"])
        );
        // A value-taking short at the end of a cluster takes the next token.
        assert_eq!(normalize_args(args(&["-hp", "-lf"])), args(&["-hp", "-lf"]));
        // An attached value leaves the next token free.
        assert_eq!(
            normalize_args(args(&["-p5555", "-lf", "x"])),
            args(&["-p5555", "--log-file", "x"])
        );
    }

    #[test]
    fn nothing_after_double_dash_is_rewritten() {
        assert_eq!(
            normalize_args(args(&["-pwd", "a", "--", "-lf", "-pwd=x"])),
            args(&["--admin-password", "a", "--", "-lf", "-pwd=x"])
        );
        // `--` as a value is a value, as clap reads it, not a separator.
        assert_eq!(
            normalize_args(args(&["-pwd", "--", "-lf", "x"])),
            args(&["--admin-password", "--", "--log-file", "x"])
        );
    }

    #[test]
    fn program_name_and_similar_tokens_are_untouched() {
        let list = ["-pwd", "-pwdx", "--pwd", "-lfoo"];
        let mut input = args(&list);
        input[0] = OsString::from("-lf");
        let out = normalize_args(input);
        assert_eq!(out[0], "-lf");
        assert_eq!(out[1], "--admin-password");
        assert_eq!(&out[2..], &args(&list)[2..]);
        assert!(normalize_args(Vec::<OsString>::new()).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_arguments_survive() {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let path = OsString::from_vec(b"log-\xff.txt".to_vec());
        let mut attached = OsString::from("-lf=");
        attached.push(&path);
        let out = normalize_args([
            OsString::from("prog"),
            attached,
            OsString::from("-lf"),
            path.clone(),
        ]);
        let mut expected = OsString::from("--log-file=");
        expected.push(&path);
        assert_eq!(
            out,
            [
                OsString::from("prog"),
                expected,
                OsString::from("--log-file"),
                path.clone()
            ]
        );
        let attached_form = &out[..2];
        let separate_form = [&out[0], &out[2], &out[3]];
        for form in [
            attached_form.to_vec(),
            separate_form.map(Clone::clone).to_vec(),
        ] {
            let c = config_from(form);
            assert_eq!(
                c.log_file.as_deref().map(|p| p.as_os_str().as_bytes()),
                Some(path.as_bytes())
            );
        }
    }
}
