//! How fast one address can guess each password: logins (and room joins)
//! with wrong passwords as fast as the server answers them, for a fixed
//! time, alone or mixed with logins the attacker is allowed to make.

use std::time::{Duration, Instant};

use replication_serve::client::{Client, ClientError, ClientOptions};

use crate::server::{self, ServerProcess};

const WAIT: Duration = Duration::from_secs(20);

/// What the guesser aims at, and what it mixes in.
#[derive(Clone, Copy, Debug)]
pub enum Attack {
    /// Wrong admin passwords, nothing else.
    Admin,
    /// Two wrong admin passwords, then an ordinary login, over and over
    /// (the pattern that used to reset the count).
    AdminWithLogins,
    /// Wrong server passwords on a private server.
    Server,
    /// Wrong room passwords with JOIN_ROOM from one session.
    RoomJoin,
}

impl Attack {
    pub const ALL: [Self; 4] = [
        Self::Admin,
        Self::AdminWithLogins,
        Self::Server,
        Self::RoomJoin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Admin => "admin password",
            Self::AdminWithLogins => "admin password, each 2 guesses followed by a good login",
            Self::Server => "server password",
            Self::RoomJoin => "room password, JOIN_ROOM",
        }
    }
}

/// Guesses checked (answered "wrong password") and attempts refused
/// unchecked, over `seconds`.
pub struct Guesses {
    pub checked: u64,
    pub refused: u64,
    pub seconds: f64,
}

pub fn run(
    binary: &std::path::Path,
    first_port: u16,
    attack: Attack,
    seconds: f64,
) -> anyhow::Result<Guesses> {
    let extra: &[&str] = match attack {
        Attack::Server => &["-spwd", "letmein", "-pwd", "admin"],
        _ => &["-pwd", "admin"],
    };
    let server = ServerProcess::start(binary, first_port, extra)?;
    let port = server.port;
    let context = zmq::Context::new();
    let with_server_password = |mut options: ClientOptions| {
        if matches!(attack, Attack::Server) {
            options.role = replication_serve::protocol::Role::Client;
            options.server_password = Some("guess".into());
        }
        options
    };
    // A room with a password, and one session that keeps trying to join it.
    let mut joiner = None;
    let mut owner = if matches!(attack, Attack::RoomJoin) {
        let mut options = ClientOptions::admin(port, "owner", "admin").in_room("vault");
        options.room_password = Some("right".into());
        let mut owner = Client::connect_in(&context, server::client(options))?;
        owner.authenticate(WAIT)?;
        let mut guesser = Client::connect_in(
            &context,
            server::client(ClientOptions::new(port, "guesser")),
        )?;
        guesser.authenticate(WAIT)?;
        joiner = Some(guesser);
        Some(owner)
    } else {
        None
    };
    // One connection guesses again and again, as an attacker would: a
    // refused login leaves the sockets free to try again.
    let mut guesser = Client::connect_in(
        &context,
        server::client(with_server_password(ClientOptions::admin(
            port, "guesser", "guess",
        ))),
    )?;
    let mut member =
        Client::connect_in(&context, server::client(ClientOptions::new(port, "member")))?;
    let (mut checked, mut refused, mut n) = (0, 0, 0u64);
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        n += 1;
        // The room's owner and the joiner answer the server's pings, or
        // they would time out and the room close.
        if let Some(owner) = &mut owner {
            owner.poll_once(0)?;
        }
        let outcome = match (&mut joiner, attack) {
            (Some(guesser), _) => guesser.join_room("vault", Some("wrong"), WAIT).map(|_| ()),
            (None, Attack::AdminWithLogins) if n % 3 == 0 => {
                member.authenticate(WAIT)?;
                // Gone again (its goodbye read), so that it can log in again.
                member.leave()?;
                member.wait_for(WAIT, |e| {
                    matches!(
                        e.message,
                        replication_serve::protocol::ServerMessage::Disconnect { .. }
                    )
                })?;
                continue;
            }
            (None, _) => guesser.authenticate(WAIT).map(|_| ()),
        };
        match outcome {
            Err(ClientError::Refused { code, .. }) if code == "TooManyAttempts" => refused += 1,
            Err(ClientError::Refused { code, .. }) if code.starts_with("Wrong") => checked += 1,
            other => anyhow::bail!("unexpected answer to a guess: {other:?}"),
        }
    }
    Ok(Guesses {
        checked,
        refused,
        seconds: started.elapsed().as_secs_f64(),
    })
}
