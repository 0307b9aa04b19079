//! The bare programs run as child processes of the tool (hidden
//! subcommands), so that their CPU is measured apart from the tool's, as
//! the server's is.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// A child process that ends with its owner.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts this tool with `args` (a hidden subcommand that calls
/// [`listen`]) and returns it with the port it listens on.
pub fn spawn_listening(args: &[&str]) -> anyhow::Result<(KillOnDrop, u16)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {args:?}"))?;
    let stdout = child.stdout.take().context("no output from the child")?;
    let child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = line
        .trim()
        .parse()
        .with_context(|| format!("{args:?} did not say its port (it wrote {line:?})"))?;
    Ok((child, port))
}

/// In the child: listens on a free loopback port and tells the tool which,
/// on the first line of its output.
pub fn listen() -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", listener.local_addr()?.port())?;
    out.flush()?;
    Ok(listener)
}
