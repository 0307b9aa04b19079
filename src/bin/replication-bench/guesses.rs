//! How fast one address can guess each password: logins (and room joins)
//! with wrong passwords as fast as the server answers them, for a fixed
//! time, alone or mixed with logins the attacker is allowed to make.

use std::time::{Duration, Instant};

use replication_serve::client::{Client, ClientError, ClientOptions};

use crate::server::ServerProcess;

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
            options.server_password = Some("guess".into());
        }
        options
    };
    // A room with a password, and one session that keeps trying to join it.
    let mut joiner = None;
    let _owner = if matches!(attack, Attack::RoomJoin) {
        let mut options = ClientOptions::admin(port, "owner", "admin").in_room("vault");
        options.room_password = Some("right".into());
        let mut owner = Client::connect_in(&context, options)?;
        owner.authenticate(WAIT)?;
        let mut guesser = Client::connect_in(&context, ClientOptions::new(port, "guesser"))?;
        guesser.authenticate(WAIT)?;
        joiner = Some(guesser);
        Some(owner)
    } else {
        None
    };
    let (mut checked, mut refused, mut n) = (0, 0, 0u64);
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        n += 1;
        let outcome = match (&mut joiner, attack) {
            (Some(guesser), _) => guesser.join_room("vault", Some("wrong"), WAIT).map(|_| ()),
            (None, Attack::AdminWithLogins) if n % 3 == 0 => {
                let options = ClientOptions::new(port, &format!("user{n}"));
                let mut client = Client::connect_in(&context, options)?;
                client.authenticate(WAIT)?;
                continue;
            }
            (None, Attack::Server) => {
                let options = with_server_password(ClientOptions::new(port, &format!("g{n}")));
                Client::connect_in(&context, options)?
                    .authenticate(WAIT)
                    .map(|_| ())
            }
            (None, _) => {
                let options = ClientOptions::admin(port, &format!("g{n}"), "guess");
                Client::connect_in(&context, options)?
                    .authenticate(WAIT)
                    .map(|_| ())
            }
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
