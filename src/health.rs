//! The health check: is a server serving on these ports? Used by
//! `replication-serve --health-check`, Docker's HEALTHCHECK, and people
//! checking their port forwarding from another machine.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::cli::HealthTarget;
use crate::client::{Client, ClientError, ClientOptions, ServerTrust};
use crate::protocol::{Channel, PROTOCOL_VERSION, ServerMessage};

/// How long `--health-check` waits for each answer. Short enough for a
/// container health check, long enough for a server across an ocean.
const HEALTH_DEADLINE: Duration = Duration::from_secs(3);

/// `--health-check`: every port must answer as a ZeroMQ socket, and the
/// server must answer SERVER_INFO (which needs no password). Returns one
/// line for people: what serves, or what does not and why.
///
/// Checking every port, not only the one SERVER_INFO uses, is what makes
/// this useful from another machine: a missing port-forwarding rule or
/// firewall opening shows up as the port that does not answer.
pub fn check(target: &HealthTarget) -> Result<String, String> {
    let (ports, info) = std::thread::scope(|scope| {
        let probes = target
            .ports
            .map(|port| scope.spawn(move || probe(&target.host, port)));
        let info = server_info(target);
        let ports = probes.map(|probe| {
            probe
                .join()
                .unwrap_or_else(|_| Err("the check itself failed".to_owned()))
        });
        (ports, info)
    });
    // Ports failing for the same reason are named together: when nothing
    // listens, that is one short line rather than four long ones.
    let mut problems: Vec<(String, String)> = Vec::new();
    for ((result, port), channel) in ports.iter().zip(target.ports).zip(Channel::ALL) {
        if let Err(reason) = result {
            let name = format!("{port} ({})", channel.name());
            match problems.iter_mut().find(|(_, r)| r == reason) {
                Some((names, _)) => names.push_str(&format!(", {name}")),
                None => problems.push((format!("port {name}"), reason.clone())),
            }
        }
    }
    let commands_answered = ports[0].is_ok();
    let place = format!(
        "{} ports {}-{}",
        target.host, target.ports[0], target.ports[3]
    );
    match info {
        Ok(summary) if problems.is_empty() => return Ok(format!("{place}: {summary}")),
        Ok(_) => {}
        Err(e) if commands_answered => {
            problems.push((format!("SERVER_INFO on port {}", target.ports[0]), e));
        }
        Err(_) => {}
    }
    let problems: Vec<String> = problems
        .into_iter()
        .map(|(what, why)| format!("{what}: {why}"))
        .collect();
    Err(format!("{place}: not serving: {}", problems.join("; ")))
}

/// Connects to one port and reads the start of the ZeroMQ greeting (ZMTP 3:
/// ten bytes, the first 0xFF and the last 0x7F), which libzmq sends as soon
/// as it accepts a connection. Closing right after is harmless to the server.
fn probe(host: &str, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + HEALTH_DEADLINE;
    let addresses = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut last = "no address".to_owned();
    for address in addresses {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut stream =
            match TcpStream::connect_timeout(&address, left.max(Duration::from_millis(1))) {
                Ok(stream) => stream,
                Err(e) => {
                    last = describe_io(&e);
                    continue;
                }
            };
        let left = deadline.saturating_duration_since(Instant::now());
        let mut greeting = [0u8; 10];
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .and_then(|()| stream.read_exact(&mut greeting))
            .map_err(|e| describe_io(&e))?;
        return if greeting[0] == 0xFF && greeting[9] == 0x7F {
            Ok(())
        } else {
            Err("something answers, but not a ZeroMQ socket (another program on this port?)".into())
        };
    }
    Err(last)
}

fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => {
            "connection refused: nothing listens there, or a firewall rejects it".into()
        }
        TimedOut | WouldBlock => format!(
            "no answer within {} s: a firewall or a missing port-forwarding rule drops it",
            HEALTH_DEADLINE.as_secs()
        ),
        UnexpectedEof | ConnectionReset => "the connection was closed at once".into(),
        _ => e.to_string(),
    }
}

/// Asks SERVER_INFO on the commands port and sums up the answer.
fn server_info(target: &HealthTarget) -> Result<String, String> {
    // libzmq wants IPv6 addresses in brackets.
    let host = if target.host.contains(':') {
        format!("[{}]", target.host)
    } else {
        target.host.clone()
    };
    // The check sends no secret, so the key the server gives is enough:
    // it only needs the session to be encrypted like any other.
    let options = ClientOptions {
        host,
        trust: ServerTrust::Unchecked,
        key_timeout: HEALTH_DEADLINE,
        ..ClientOptions::new(target.ports[0], "health-check")
    };
    let mut client = Client::connect(options).map_err(|e| e.to_string())?;
    // The fingerprint lets whoever runs the check compare it with the one
    // the server's admin reads out.
    let encryption = match client.server_key() {
        Some(key) => format!("encrypted, fingerprint {}", key.fingerprint()),
        None => "not encrypted".to_owned(),
    };
    let answer = match client.server_info(HEALTH_DEADLINE) {
        Err(ClientError::Timeout(_))
            if matches!(
                client.handshake_refusal(),
                Some(ClientError::KeyNotAdmitted(_))
            ) =>
        {
            return Ok(format!(
                "serving: {encryption}; it admits only listed client keys, so this check could not ask SERVER_INFO"
            ));
        }
        other => other.map_err(|e| e.to_string())?,
    };
    match answer {
        ServerMessage::ServerInfo {
            protocol_version,
            server_version,
            private,
            state,
            users_online,
            datablocks,
            ..
        } => {
            let protocol = if protocol_version == PROTOCOL_VERSION {
                format!("protocol {protocol_version}")
            } else {
                format!("protocol {protocol_version}, not {PROTOCOL_VERSION} as this tool")
            };
            Ok(format!(
                "serving: replication-serve {server_version} ({protocol}), session {state}, \
                 {users_online} users online, {datablocks} datablocks, {}, {encryption}",
                if private { "private" } else { "public" }
            ))
        }
        other => Err(format!("unexpected answer {other:?}")),
    }
}
