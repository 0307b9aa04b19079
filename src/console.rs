//! The admin console on stdin: `help`, `users`, `rooms`, `locks`, `kick`,
//! `close`, `status`, `save`, `reset`, `key`, `reload-keys`, `exit`.
//!
//! On a terminal it uses rustyline (history, line editing) and routes log
//! lines above the prompt so they never garble what the admin is typing;
//! Ctrl-D there is answered with a hint, since closing a terminal's input by
//! mistake must not leave the admin without a console. On a pipe (scripts)
//! it reads plain lines. When stdin ends (`docker run -d`, systemd, a pipe
//! closed) the server keeps running headless.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::core::ConsoleRequest;
use crate::core::rooms::DEFAULT_ROOM;
use crate::security::Security;

mod format;
use format::human_bytes;
pub use format::{format_locks, format_rooms, format_status, format_users};

/// The commands, with their one-line help, in the order `help` lists them.
const COMMANDS: &[(&str, &str, &str)] = &[
    (
        "help",
        "help [COMMAND]",
        "list the commands, or explain one (also: ?)",
    ),
    (
        "users",
        "users [ROOM]",
        "list connected users (of one room, or of all): room, name, role, status, latency",
    ),
    (
        "rooms",
        "rooms",
        "list the rooms, one line each: users, state, datablocks, size, keep-open",
    ),
    (
        "locks",
        "locks [ROOM] [USER]",
        "who holds which datablock, and since when (in one room, of one user)",
    ),
    (
        "kick",
        "kick NAME [ROOM] [REASON]",
        "disconnect a user, releasing everything they own (name the room when several rooms have a user of that name)",
    ),
    (
        "close",
        "close ROOM [REASON]",
        "disconnect everyone in a room and remove it with its data (not the default room)",
    ),
    (
        "status",
        "status [ROOM]",
        "state, datablocks, bytes and users of each room (or one), and uptime",
    ),
    (
        "save",
        "save [FILE|-] [ROOM]",
        "write a room (default: the default room) to a session file while everyone keeps working; without FILE or with -, a new file in the backup directory",
    ),
    (
        "reset",
        "reset [ROOM]",
        "after asking: save a room's scene (default: the default room) to the backup directory, disconnect its users and start it empty, waiting for a new upload",
    ),
    (
        "key",
        "key",
        "the server's public key and its fingerprint, for clients to check they reach this server",
    ),
    (
        "reload-keys",
        "reload-keys",
        "read the --authorized-keys file again (it is also read when it changes)",
    ),
    (
        "exit",
        "exit",
        "disconnect everyone and stop the server (also: quit, Ctrl+C)",
    ),
];

/// A parsed console line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleCommand {
    Empty,
    Help(Option<String>),
    Users(Option<String>),
    Rooms,
    /// `locks [ROOM] [USER]`: with one word, the server tells whether it is
    /// a room or a user.
    Locks {
        first: Option<String>,
        user: Option<String>,
    },
    Reset(Option<String>),
    /// `rest`: a room and/or a reason; the server tells which.
    Kick {
        user: String,
        rest: Option<String>,
    },
    Close {
        room: String,
        reason: Option<String>,
    },
    Status(Option<String>),
    Save {
        path: Option<PathBuf>,
        room: Option<String>,
    },
    Key,
    ReloadKeys,
    Exit,
}

/// Parses one line typed by the admin.
pub fn parse(line: &str) -> Result<ConsoleCommand, String> {
    let line = line.trim();
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (line, ""),
    };
    let no_args = |cmd: ConsoleCommand| {
        if rest.is_empty() {
            Ok(cmd)
        } else {
            Err(format!("'{word}' takes no arguments"))
        }
    };
    match word.to_ascii_lowercase().as_str() {
        "" => Ok(ConsoleCommand::Empty),
        "help" | "?" => Ok(ConsoleCommand::Help(
            (!rest.is_empty()).then(|| rest.to_owned()),
        )),
        "users" => one_optional(rest, "users [ROOM]").map(ConsoleCommand::Users),
        "rooms" => no_args(ConsoleCommand::Rooms),
        "locks" => {
            let words: Vec<&str> = rest.split_whitespace().collect();
            match words.as_slice() {
                [] => Ok(ConsoleCommand::Locks {
                    first: None,
                    user: None,
                }),
                [first] => Ok(ConsoleCommand::Locks {
                    first: Some((*first).to_owned()),
                    user: None,
                }),
                [room, user] => Ok(ConsoleCommand::Locks {
                    first: Some((*room).to_owned()),
                    user: Some((*user).to_owned()),
                }),
                _ => Err("usage: locks [ROOM] [USER]".into()),
            }
        }
        "reset" => one_optional(rest, "reset [ROOM]").map(ConsoleCommand::Reset),
        "status" => one_optional(rest, "status [ROOM]").map(ConsoleCommand::Status),
        "close" => {
            let (room, reason) = match rest.split_once(char::is_whitespace) {
                Some((r, why)) => (r, Some(why.trim().to_owned()).filter(|w| !w.is_empty())),
                None => (rest, None),
            };
            if room.is_empty() {
                return Err("usage: close ROOM [REASON]".into());
            }
            Ok(ConsoleCommand::Close {
                room: room.to_owned(),
                reason,
            })
        }
        "save" => {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let (path, room) = match words.as_slice() {
                [] => (None, None),
                [path] => (Some(*path), None),
                [path, room] => (Some(*path), Some(*room)),
                _ => return Err("usage: save [FILE|-] [ROOM] (a FILE without spaces)".into()),
            };
            Ok(ConsoleCommand::Save {
                path: path.filter(|p| *p != "-").map(PathBuf::from),
                room: room.map(str::to_owned),
            })
        }
        "exit" | "quit" | "stop" => no_args(ConsoleCommand::Exit),
        "key" => no_args(ConsoleCommand::Key),
        "reload-keys" => no_args(ConsoleCommand::ReloadKeys),
        "kick" => {
            let (user, more) = match rest.split_once(char::is_whitespace) {
                Some((u, r)) => (u, Some(r.trim().to_owned()).filter(|r| !r.is_empty())),
                None => (rest, None),
            };
            if user.is_empty() {
                return Err("usage: kick NAME [ROOM] [REASON]".into());
            }
            Ok(ConsoleCommand::Kick {
                user: user.to_owned(),
                rest: more,
            })
        }
        other => Err(format!(
            "unknown command '{other}'; type 'help' for the list"
        )),
    }
}

/// At most one argument.
fn one_optional(rest: &str, usage: &str) -> Result<Option<String>, String> {
    match rest.split_whitespace().count() {
        0 => Ok(None),
        1 => Ok(Some(rest.to_owned())),
        _ => Err(format!("usage: {usage}")),
    }
}

/// The help text: every command, or one.
pub fn help(topic: Option<&str>) -> String {
    match topic {
        None => {
            let mut out = String::from("commands:\n");
            for (_, usage, text) in COMMANDS {
                out.push_str(&format!("  {usage:<20} {text}\n"));
            }
            out
        }
        Some(topic) => {
            let topic = topic.trim().to_ascii_lowercase();
            let topic = match topic.as_str() {
                "?" => "help",
                "quit" | "stop" => "exit",
                t => t,
            };
            match COMMANDS.iter().find(|(name, _, _)| *name == topic) {
                Some((_, usage, text)) => format!("{usage}: {text}\n"),
                None => format!("no command '{topic}'; type 'help' for the list\n"),
            }
        }
    }
}

/// Runs one command against the server and returns what to print. `None`
/// means the console should stop reading (exit). `confirm` shows a question
/// and tells whether the admin answered yes.
pub fn execute(
    command: ConsoleCommand,
    server: &mpsc::Sender<ConsoleRequest>,
    security: &Security,
    shutdown: &CancellationToken,
    confirm: &mut dyn FnMut(&str) -> bool,
) -> Option<String> {
    let out = match command {
        ConsoleCommand::Empty => String::new(),
        ConsoleCommand::Help(topic) => help(topic.as_deref()),
        ConsoleCommand::Exit => {
            shutdown.cancel();
            return None;
        }
        ConsoleCommand::Users(room) => {
            match ask(server, |reply| ConsoleRequest::Users { room, reply }) {
                Some(Ok(users)) => format_users(&users),
                Some(Err(e)) => format!("{e}\n"),
                None => SHUTTING_DOWN.into(),
            }
        }
        ConsoleCommand::Locks { first, user } => {
            match ask(server, |reply| ConsoleRequest::Locks { first, user, reply }) {
                Some(Ok(locks)) => format_locks(&locks, SystemTime::now()),
                Some(Err(e)) => format!("{e}\n"),
                None => SHUTTING_DOWN.into(),
            }
        }
        ConsoleCommand::Reset(room) => reset(room, server, confirm),
        ConsoleCommand::Key => security.describe(),
        ConsoleCommand::ReloadKeys => security.reload(),
        ConsoleCommand::Rooms => match ask(server, ConsoleRequest::Rooms) {
            Some(rooms) => format_rooms(&rooms),
            None => SHUTTING_DOWN.into(),
        },
        ConsoleCommand::Status(room) => {
            match ask(server, |reply| ConsoleRequest::Status { room, reply }) {
                Some(Ok(reports)) => format_status(&reports),
                Some(Err(e)) => format!("{e}\n"),
                None => SHUTTING_DOWN.into(),
            }
        }
        ConsoleCommand::Close { room, reason } => {
            let answer = ask(server, |reply| ConsoleRequest::Close {
                room: room.clone(),
                reason,
                reply,
            });
            match answer {
                Some(Ok(users)) => format!("closed room {room} ({users} users disconnected)\n"),
                Some(Err(e)) => format!("cannot close {room}: {e}\n"),
                None => SHUTTING_DOWN.into(),
            }
        }
        ConsoleCommand::Save { path, room } => {
            match ask(server, |reply| ConsoleRequest::Save { path, room, reply }) {
                Some(Ok(saved)) => format!(
                    "saved {} datablocks ({}) to {} ({} on disk)\n",
                    saved.summary.datablocks,
                    human_bytes(saved.summary.bytes),
                    saved.path.display(),
                    human_bytes(usize::try_from(saved.summary.file_bytes).unwrap_or(usize::MAX)),
                ),
                Some(Err(e)) => format!("cannot save: {e}\n"),
                None => SHUTTING_DOWN.into(),
            }
        }
        ConsoleCommand::Kick { user, rest } => {
            let answer = ask(server, |reply| ConsoleRequest::Kick {
                user: user.clone(),
                room: None,
                reason: rest,
                reply,
            });
            match answer {
                Some(Ok(room)) => format!("kicked {user} from room {room}\n"),
                Some(Err(e)) => format!("cannot kick {user}: {e}\n"),
                None => SHUTTING_DOWN.into(),
            }
        }
    };
    Some(out)
}

/// `reset [ROOM]`: says what will happen, asks, and resets.
fn reset(
    room: Option<String>,
    server: &mpsc::Sender<ConsoleRequest>,
    confirm: &mut dyn FnMut(&str) -> bool,
) -> String {
    let status = ask(server, |reply| ConsoleRequest::Status {
        room: Some(room.clone().unwrap_or_else(|| DEFAULT_ROOM.to_owned())),
        reply,
    });
    let report = match status {
        Some(Ok(reports)) => match reports.into_iter().next() {
            Some(report) => report,
            None => return "no such room\n".into(),
        },
        Some(Err(e)) => return format!("cannot reset: {e}\n"),
        None => return SHUTTING_DOWN.into(),
    };
    let question = format!(
        "reset room {}? It is {} with {} datablocks ({}) and {} users: its scene is saved to the backup directory first, then its users are disconnected and it starts empty.\nType yes to reset room {}: ",
        report.room,
        report.state,
        report.datablocks,
        human_bytes(report.bytes),
        report.users,
        report.room
    );
    if !confirm(&question) {
        return "reset cancelled; nothing changed\n".into();
    }
    let name = report.room;
    match ask(server, |reply| ConsoleRequest::Reset {
        room: Some(name.clone()),
        reply,
    }) {
        Some(Ok(done)) => {
            let saved = match &done.backup {
                Some(path) => format!("its scene was saved to {}", path.display()),
                None => "it had no complete scene to save".to_owned(),
            };
            format!(
                "room {name} reset: {saved}; {} users disconnected; it waits for a new upload\n",
                done.users
            )
        }
        Some(Err(e)) => format!("cannot reset room {name}: {e}\n"),
        None => SHUTTING_DOWN.into(),
    }
}

fn ask<T>(
    server: &mpsc::Sender<ConsoleRequest>,
    request: impl FnOnce(oneshot::Sender<T>) -> ConsoleRequest,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    server.blocking_send(request(tx)).ok()?;
    rx.blocking_recv().ok()
}

const SHUTTING_DOWN: &str = "the server is shutting down\n";

/// Starts the console on its own thread (stdin reads block).
pub fn spawn(
    server: mpsc::Sender<ConsoleRequest>,
    security: Security,
    shutdown: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            if std::io::stdin().is_terminal() {
                run_terminal(&server, &security, &shutdown);
            } else {
                run_plain(&server, &security, &shutdown);
            }
        })
}

/// Plain lines from a pipe; replies on stdout. A question is answered by
/// the next line.
fn run_plain(
    server: &mpsc::Sender<ConsoleRequest>,
    security: &Security,
    shutdown: &CancellationToken,
) {
    let stdin = std::io::stdin();
    let mut line = String::new();
    let mut confirm = |question: &str| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{question}");
        let _ = stdout.flush();
        let mut answer = String::new();
        matches!(stdin.lock().read_line(&mut answer), Ok(n) if n > 0) && is_yes(&answer)
    };
    loop {
        line.clear();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) => {
                tracing::info!("console input closed; running without a console");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the console; running without it");
                return;
            }
        }
        let output = match parse(&line) {
            Ok(command) => execute(command, server, security, shutdown, &mut confirm),
            Err(e) => Some(format!("{e}\n")),
        };
        let mut stdout = std::io::stdout().lock();
        match output {
            Some(text) => {
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
            None => return,
        }
    }
}

/// rustyline on a terminal; logs are printed above the prompt.
fn run_terminal(
    server: &mpsc::Sender<ConsoleRequest>,
    security: &Security,
    shutdown: &CancellationToken,
) {
    use rustyline::ExternalPrinter;
    use rustyline::error::ReadlineError;

    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the terminal console; falling back to plain input");
            return run_plain(server, security, shutdown);
        }
    };
    if let Ok(mut printer) = editor.create_external_printer() {
        crate::logging::set_console_printer(Box::new(move |line| {
            let _ = printer.print(format!("{line}\n"));
        }));
    }
    println!("replication-serve console: type 'help' for the commands");
    let mut eofs = EofGuard::default();
    loop {
        match editor.readline("> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                // The explanation above, the question itself as the prompt.
                let mut confirm = |question: &str| {
                    let (explanation, prompt) =
                        question.rsplit_once('\n').unwrap_or(("", question));
                    if !explanation.is_empty() {
                        println!("{explanation}");
                    }
                    editor.readline(prompt).is_ok_and(|answer| is_yes(&answer))
                };
                let output = match parse(&line) {
                    Ok(command) => execute(command, server, security, shutdown, &mut confirm),
                    Err(e) => Some(format!("{e}\n")),
                };
                match output {
                    Some(text) => print!("{text}"),
                    None => break,
                }
            }
            Err(ReadlineError::Interrupted) => {
                shutdown.cancel();
                break;
            }
            Err(ReadlineError::Eof) => {
                if eofs.closed(Instant::now()) {
                    tracing::info!("the terminal closed; running without a console");
                    break;
                }
                println!("Ctrl-D does not stop the server: type exit to stop the server");
            }
            Err(e) => {
                tracing::warn!(error = %e, "console error; running without a console");
                break;
            }
        }
    }
    crate::logging::clear_console_printer();
}

fn is_yes(answer: &str) -> bool {
    answer.trim().eq_ignore_ascii_case("yes")
}

/// Tells a person's Ctrl-D from a terminal that is gone: a terminal that
/// hung up answers every read at once with end of input, far faster than
/// anyone types.
#[derive(Default)]
struct EofGuard {
    /// When the current run of end-of-input answers began, and its length.
    run: Option<(Instant, u32)>,
}

impl EofGuard {
    /// This many in a row within [`Self::WITHIN`] mean the terminal closed.
    const BURST: u32 = 20;
    const WITHIN: Duration = Duration::from_secs(1);

    /// Counts one end of input; true when the terminal seems closed.
    fn closed(&mut self, now: Instant) -> bool {
        let (since, count) = match self.run {
            Some((since, count)) if now.duration_since(since) < Self::WITHIN => (since, count + 1),
            _ => (now, 1),
        };
        self.run = Some((since, count));
        count >= Self::BURST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(parse("  "), Ok(ConsoleCommand::Empty));
        assert_eq!(parse("?"), Ok(ConsoleCommand::Help(None)));
        assert_eq!(
            parse("help kick"),
            Ok(ConsoleCommand::Help(Some("kick".into())))
        );
        assert_eq!(parse("USERS"), Ok(ConsoleCommand::Users(None)));
        assert_eq!(
            parse("users team-a"),
            Ok(ConsoleCommand::Users(Some("team-a".into())))
        );
        assert_eq!(parse("status"), Ok(ConsoleCommand::Status(None)));
        assert_eq!(
            parse("status b"),
            Ok(ConsoleCommand::Status(Some("b".into())))
        );
        assert_eq!(parse("rooms"), Ok(ConsoleCommand::Rooms));
        assert_eq!(parse("quit"), Ok(ConsoleCommand::Exit));
        assert_eq!(
            parse("kick bob  spamming the scene "),
            Ok(ConsoleCommand::Kick {
                user: "bob".into(),
                rest: Some("spamming the scene".into())
            })
        );
        assert_eq!(
            parse("kick bob"),
            Ok(ConsoleCommand::Kick {
                user: "bob".into(),
                rest: None
            })
        );
        assert_eq!(
            parse("close b  done for today"),
            Ok(ConsoleCommand::Close {
                room: "b".into(),
                reason: Some("done for today".into())
            })
        );
        assert_eq!(
            parse("save"),
            Ok(ConsoleCommand::Save {
                path: None,
                room: None
            })
        );
        assert_eq!(
            parse("save - b"),
            Ok(ConsoleCommand::Save {
                path: None,
                room: Some("b".into())
            })
        );
        assert_eq!(
            parse("save x.rsession b"),
            Ok(ConsoleCommand::Save {
                path: Some("x.rsession".into()),
                room: Some("b".into())
            })
        );
    }

    #[test]
    fn rejects_bad_lines_with_a_hint() {
        assert!(parse("kick").unwrap_err().contains("usage"));
        assert!(parse("users a b").unwrap_err().contains("usage"));
        assert!(parse("rooms now").unwrap_err().contains("no arguments"));
        assert!(parse("close").unwrap_err().contains("usage"));
        assert!(parse("save a b c").unwrap_err().contains("usage"));
        assert!(parse("launch").unwrap_err().contains("help"));
    }

    #[test]
    fn help_lists_and_explains() {
        let all = help(None);
        for (name, _, _) in COMMANDS {
            assert!(all.contains(name), "{all}");
        }
        assert!(help(Some("kick")).starts_with("kick NAME"));
        assert!(help(Some("?")).starts_with("help"));
        assert!(help(Some("nope")).contains("no command"));
    }

    #[test]
    fn parses_locks_and_reset() {
        assert_eq!(
            parse("locks"),
            Ok(ConsoleCommand::Locks {
                first: None,
                user: None
            })
        );
        assert_eq!(
            parse("locks b alice"),
            Ok(ConsoleCommand::Locks {
                first: Some("b".into()),
                user: Some("alice".into())
            })
        );
        assert!(parse("locks a b c").unwrap_err().contains("usage"));
        assert_eq!(parse("reset"), Ok(ConsoleCommand::Reset(None)));
        assert_eq!(
            parse("reset b"),
            Ok(ConsoleCommand::Reset(Some("b".into())))
        );
        assert!(parse("reset a b").unwrap_err().contains("usage"));
        assert!(is_yes(" YES\n") && !is_yes("y") && !is_yes(""));
    }

    #[test]
    fn a_burst_of_end_of_input_means_the_terminal_closed() {
        let start = Instant::now();
        let mut guard = EofGuard::default();
        assert!(!guard.closed(start));
        // A person pressing Ctrl-D now and then never trips it.
        let mut guard = EofGuard::default();
        for i in 1..100 {
            assert!(!guard.closed(start + Duration::from_secs(2 * i)));
        }
        let mut guard = EofGuard::default();
        let tripped = (0..EofGuard::BURST).map(|_| guard.closed(start)).last();
        assert_eq!(tripped, Some(true));
    }
}
