//! Passwords given on the command line leave it: the process list shows
//! every process's arguments to every user of the machine, while its
//! environment is readable only by its owner. [`move_to_environment`]
//! takes the password options out of the arguments so that the binary can
//! start itself again with them in its environment.

use std::ffi::OsString;

use clap::CommandFactory;

use super::Cli;
use super::legacy::{
    LONG_ADMIN_PASSWORD, LONG_SERVER_PASSWORD, expects_separate_value, normalize_args, split_after,
};

/// The password options and the variables that carry them instead.
const SECRETS: [(&str, &str); 2] = [
    (LONG_ADMIN_PASSWORD, "REPLICATION_ADMIN_PASSWORD"),
    (LONG_SERVER_PASSWORD, "REPLICATION_SERVER_PASSWORD"),
];

/// Environment variables to set, each with its value.
pub type Variables = Vec<(&'static str, OsString)>;

/// The arguments without their passwords, and the variables to set, or
/// `None` when no password is on the command line. The environment holds
/// the command line's value, so it still wins over a variable of the same
/// name that was set, as the command line does.
pub fn move_to_environment<I, T>(args: I) -> Option<(Vec<OsString>, Variables)>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut cmd = Cli::command();
    cmd.build();
    let mut args = normalize_args(args).into_iter();
    let mut kept: Vec<OsString> = args.next().into_iter().collect();
    let mut moved = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--" {
            kept.push(arg);
            kept.extend(args.by_ref());
            break;
        }
        let text = arg.to_string_lossy();
        let secret = SECRETS.iter().find_map(|&(long, variable)| {
            let rest = text.strip_prefix("--")?.strip_prefix(long)?;
            match rest.strip_prefix('=') {
                Some(_) => Some((variable, split_after(&arg, long.len() + 3))),
                None if rest.is_empty() => Some((variable, None)),
                None => None,
            }
        });
        match secret {
            Some((variable, Some(value))) => moved.push((variable, value)),
            Some((variable, None)) => match args.next() {
                Some(value) => moved.push((variable, value)),
                // clap will say the value is missing.
                None => kept.push(arg),
            },
            None => {
                let takes_value = expects_separate_value(&cmd, &text);
                kept.push(arg);
                if takes_value && let Some(value) = args.next() {
                    kept.push(value);
                }
            }
        }
    }
    (!moved.is_empty()).then_some((kept, moved))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn passwords_move_out_of_the_arguments() {
        let (args, moved) = move_to_environment([
            "serve",
            "-p",
            "5555",
            "-pwd",
            "boss",
            "--server-password=friends",
            "-t",
            "5000",
        ])
        .expect("moved");
        assert_eq!(strings(&args), ["serve", "-p", "5555", "-t", "5000"]);
        assert_eq!(
            moved,
            [
                ("REPLICATION_ADMIN_PASSWORD", OsString::from("boss")),
                ("REPLICATION_SERVER_PASSWORD", OsString::from("friends")),
            ]
        );
    }

    #[test]
    fn values_that_look_like_options_stay_values() {
        // The log file is named like the option; the port is not touched.
        let (args, moved) = move_to_environment([
            "serve",
            "-lf",
            "--admin-password",
            "-spwd",
            "secret",
            "-l",
            "INFO",
        ])
        .expect("moved");
        assert_eq!(
            strings(&args),
            ["serve", "--log-file", "--admin-password", "-l", "INFO"]
        );
        assert_eq!(
            moved,
            [("REPLICATION_SERVER_PASSWORD", OsString::from("secret"))]
        );
        assert!(move_to_environment(["serve", "-p", "5555", "--", "-pwd", "x"]).is_none());
    }
}
