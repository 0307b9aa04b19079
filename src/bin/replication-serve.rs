//! `replication-serve`: parses the command line, then either runs the server
//! until `exit`, SIGINT or SIGTERM, prints the effective configuration, or
//! checks whether a server is serving.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use replication_serve::cli::{Action, Sources};
use replication_serve::config::Config;
use replication_serve::security::key::KeyPair;
use replication_serve::server::{Server, ServerError};
use replication_serve::{cli, console, health, logging, report};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    hide_passwords();
    match cli::parse() {
        Ok(Action::Serve(config, sources)) => serve(*config, &sources),
        Ok(Action::PrintConfig(text)) => {
            // Fails only when stdout is closed, and then nobody is reading.
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Ok(Action::PrintPublicKey(path)) => match KeyPair::load_or_create(&path) {
            Ok((pair, _)) => {
                let key = pair.public();
                println!("{key}");
                println!("fingerprint {}", key.fingerprint());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("replication-serve: error: {}", report::one_line(&e));
                ExitCode::FAILURE
            }
        },
        Ok(Action::HealthCheck(target)) => match health::check(&target) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(line) => {
                eprintln!("{line}");
                ExitCode::FAILURE
            }
        },
        Err(e) => e.exit(),
    }
}

/// Starts this binary again with the command line's passwords moved to its
/// environment: the process list shows every process's arguments to every
/// user of the machine, its environment only to its owner. Returns only
/// when there is nothing to move or the restart failed (then the server
/// runs as it is, and says so).
fn hide_passwords() {
    use std::os::unix::process::CommandExt;

    let Some((args, moved)) = cli::move_to_environment(std::env::args_os()) else {
        return;
    };
    let error = match std::env::current_exe() {
        Ok(exe) => {
            let mut command = std::process::Command::new(exe);
            if let Some(name) = args.first() {
                command.arg0(name);
            }
            command.args(args.iter().skip(1)).envs(moved).exec()
        }
        Err(e) => e,
    };
    eprintln!(
        "replication-serve: warning: the password given on the command line stays visible in the process list (cannot start again without it: {error}); give it with REPLICATION_ADMIN_PASSWORD or a config file instead"
    );
}

fn serve(config: Config, sources: &Sources) -> ExitCode {
    if let Err(e) = logging::init(config.log_level, config.log_file.as_deref()) {
        eprintln!(
            "replication-serve: error: {}{}",
            report::one_line(&e),
            sources.note("log_file")
        );
        return ExitCode::FAILURE;
    }
    replication_serve::memory::keep_freed_memory();
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, on stderr and in the log file, naming where the
            // setting at fault was given.
            let note = e
                .downcast_ref::<ServerError>()
                .and_then(ServerError::key)
                .map(|key| sources.note(key))
                .unwrap_or_default();
            tracing::error!("{}{note}", report::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    // One thread is enough for the core: it is a single actor, and the
    // sockets and the console have threads of their own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        // Handlers are installed before the server says it is listening, so
        // a supervisor that signals right after that line is obeyed.
        let interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let server = Server::bind(config)?;
        // On stdout rather than in the log: people copy it from here into
        // their clients, and the log keeps the fingerprint.
        if let Some(encrypting) = server.encrypting() {
            let key = encrypting.pair.public();
            println!("server public key: {key}");
            println!("fingerprint:       {}", key.fingerprint());
        }
        let shutdown = CancellationToken::new();
        console::spawn(server.console_sender(), server.security(), shutdown.clone())
            .context("cannot start the console")?;
        tokio::spawn(stop_on_signal(interrupt, terminate, shutdown.clone()));
        server.run(shutdown).await?;
        Ok(())
    })
}

/// Cancels `shutdown` on SIGINT or SIGTERM (`docker stop`).
async fn stop_on_signal(mut interrupt: Signal, mut terminate: Signal, shutdown: CancellationToken) {
    tokio::select! {
        _ = interrupt.recv() => tracing::info!("SIGINT received; shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
    }
    shutdown.cancel();
}
