//! Binding a session to its connections, so that a routing identity is an
//! address and never a credential.
//!
//! The identity travels in clear, and libzmq's ROUTER sockets hand an
//! identity over to the newest connection that presents it
//! (`ROUTER_HANDOVER`, which lets a client whose TCP connection dropped
//! reconnect). The server is told of every new connection in band, before
//! anything that arrives on it (`ROUTER_NOTIFY`). A session trusts the
//! connections its identity had when it authenticated; a connection made
//! later on a channel is *unconfirmed*: what arrives on it waits (bounded),
//! and what the server would send on it is held, until it proves the session
//! by answering RESUME with the session token. A client that reconnects
//! does that at once; a stranger who reused the identity cannot.

use std::time::Instant;

use bytes::Bytes;
use subtle::ConstantTimeEq;

use super::Core;
use crate::protocol::{
    Channel, CommandRequest, HeartbeatMessage, ServerMessage, SubscriberRequest, Wire, encode,
};
use crate::room::ClientId;
use crate::transport::{ClientMessage, Command, Identity, Inbound};

/// Most messages, and bytes, an unconfirmed connection may have waiting.
const HELD_MESSAGES: usize = 256;
const HELD_BYTES: usize = 8 << 20;

/// The confirmation state of a session's connections on the commands,
/// subscriber and heartbeat channels (the publisher channel proves the
/// session with the token on every message).
#[derive(Debug, Default)]
pub struct Links {
    links: [Link; 3],
}

#[derive(Debug, Default)]
struct Link {
    /// Since when the connection is unconfirmed.
    since: Option<Instant>,
    /// What arrived on it meanwhile, handled once it proves the session:
    /// a client's own messages sent before it read the server's RESUME
    /// (its first SNAPSHOT, say) are not lost.
    held: Vec<Inbound>,
    held_bytes: usize,
}

fn slot(channel: Channel) -> Option<usize> {
    match channel {
        Channel::Commands => Some(0),
        Channel::Subscriber => Some(1),
        Channel::Heartbeat => Some(2),
        Channel::Publisher => None,
    }
}

impl Links {
    /// A new connection presented the identity on `channel`. What waited
    /// from an earlier unconfirmed one is dropped (that connection is
    /// gone, never having proven the session): returns how many. A channel
    /// unconfirmed already keeps its first deadline, so reconnecting again
    /// and again buys no time.
    pub fn connected(&mut self, channel: Channel, now: Instant) -> usize {
        let Some(link) = slot(channel).and_then(|i| self.links.get_mut(i)) else {
            return 0;
        };
        link.held_bytes = 0;
        link.since.get_or_insert(now);
        std::mem::take(&mut link.held).len()
    }

    pub fn is_confirmed(&self, channel: Channel) -> bool {
        slot(channel)
            .and_then(|i| self.links.get(i))
            .is_none_or(|link| link.since.is_none())
    }

    /// Keeps a message until the connection proves the session; false
    /// when too much waits already (the message is dropped).
    pub fn hold(&mut self, channel: Channel, event: Inbound, bytes: usize) -> bool {
        let Some(link) = slot(channel).and_then(|i| self.links.get_mut(i)) else {
            return false;
        };
        if link.held.len() >= HELD_MESSAGES || link.held_bytes + bytes > HELD_BYTES {
            return false;
        }
        link.held.push(event);
        link.held_bytes += bytes;
        true
    }

    /// The connection proved the session: what waited, in order.
    pub fn confirm(&mut self, channel: Channel) -> Vec<Inbound> {
        let Some(link) = slot(channel).and_then(|i| self.links.get_mut(i)) else {
            return Vec::new();
        };
        link.since = None;
        link.held_bytes = 0;
        std::mem::take(&mut link.held)
    }

    /// How many messages wait for their connections to prove the session.
    pub fn waiting(&self) -> usize {
        self.links.iter().map(|l| l.held.len()).sum()
    }

    /// Since when the longest-unconfirmed connection waits, if any does.
    pub fn unconfirmed_since(&self) -> Option<Instant> {
        self.links.iter().filter_map(|l| l.since).min()
    }
}

/// Whether `given` is one of the session's tokens: the current one, or the
/// one it had before its last room switch (a client may answer RESUME
/// before it has read the switch's answer).
pub fn proves(given: &str, current: &Bytes, previous: Option<&Bytes>) -> bool {
    let matches = |token: &Bytes| bool::from(token[..].ct_eq(given.as_bytes()));
    matches(current) | previous.is_some_and(matches)
}

/// The token a RESUME carries, whichever channel it came on.
fn resume_token(message: &ClientMessage) -> Option<&str> {
    match message {
        ClientMessage::Command(CommandRequest::Resume { token })
        | ClientMessage::Subscriber(SubscriberRequest::Resume { token })
        | ClientMessage::Heartbeat(HeartbeatMessage::Resume { token: Some(token) }) => Some(token),
        _ => None,
    }
}

impl Core {
    /// A new connection presented `identity` on `channel`. Without a
    /// session there is nothing to bind. With one, the connection must
    /// prove the session before anything goes through it.
    pub(super) async fn connected(&mut self, channel: Channel, identity: Identity) {
        let Some(&id) = self.by_identity.get(&identity) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let dropped = session.links.connected(channel, Instant::now());
        session.span.in_scope(|| {
            // Every client's sockets that connect after its AUTH was
            // answered come this way too: only refusals are warnings.
            tracing::debug!(
                channel = channel.name(),
                "a new connection presents this client's identity; it is held until it proves the session with RESUME"
            );
            if dropped > 0 {
                tracing::warn!(
                    channel = channel.name(),
                    dropped,
                    "refused the messages of a connection that presented this client's identity and never proved the session"
                );
            }
        });
        let prompt = match channel {
            Channel::Heartbeat => Wire {
                header: encode(&HeartbeatMessage::Resume { token: None }),
                payload: None,
                batchable: false,
            },
            _ => Wire::message(&ServerMessage::Resume {}),
        };
        self.send(Command::Hold {
            channel,
            identity,
            prompt,
        })
        .await;
    }

    /// A message from a connection that has not proven the session: RESUME
    /// with the session's token confirms it, and what waited is handled;
    /// anything else waits (bounded), unanswered, since an answer would go
    /// to that connection.
    pub(super) async fn unconfirmed(&mut self, id: ClientId, event: Inbound) {
        let Inbound::Message {
            channel,
            identity: Some(identity),
            message,
            payload,
            ..
        } = &event
        else {
            return;
        };
        let (channel, identity) = (*channel, identity.clone());
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let token = message.as_ref().ok().and_then(resume_token);
        let span = session.span.clone();
        match token {
            None => {
                let bytes = payload.as_ref().map_or(0, |p| p.len()) + 256;
                if !session.links.hold(channel, event, bytes) {
                    span.in_scope(|| {
                        tracing::warn!(
                            channel = channel.name(),
                            "dropped a message from a connection that presents this client's identity and has not proven the session"
                        )
                    });
                }
                return;
            }
            Some(token) if !proves(token, &session.token, session.previous_token.as_ref()) => {
                span.in_scope(|| {
                    tracing::warn!(
                        channel = channel.name(),
                        "refused a message from a new connection that presents this client's identity: RESUME with a wrong token"
                    )
                });
                return;
            }
            Some(_) => {}
        }
        let waiting = session.links.confirm(channel);
        session.last_seen = tokio::time::Instant::now();
        span.in_scope(|| {
            tracing::debug!(
                channel = channel.name(),
                "the new connection proved the session"
            )
        });
        self.send(Command::Release { channel, identity }).await;
        for event in waiting {
            Box::pin(self.inbound(event)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_connection_is_unconfirmed_until_proven() {
        let mut links = Links::default();
        let t0 = Instant::now();
        assert!(links.is_confirmed(Channel::Subscriber));
        assert_eq!(links.connected(Channel::Subscriber, t0), 0);
        assert!(!links.is_confirmed(Channel::Subscriber));
        assert!(links.is_confirmed(Channel::Commands));
        links.connected(Channel::Subscriber, t0 + std::time::Duration::from_secs(1));
        assert_eq!(
            links.unconfirmed_since(),
            Some(t0),
            "the first deadline holds"
        );
        assert!(links.confirm(Channel::Subscriber).is_empty());
        assert!(links.is_confirmed(Channel::Subscriber));
        assert_eq!(links.unconfirmed_since(), None);
        assert_eq!(links.connected(Channel::Publisher, t0), 0);
    }

    #[test]
    fn only_the_sessions_tokens_prove_it() {
        let current = Bytes::from_static(b"aaaa");
        let previous = Bytes::from_static(b"bbbb");
        assert!(proves("aaaa", &current, None));
        assert!(proves("bbbb", &current, Some(&previous)));
        assert!(!proves("bbbb", &current, None));
        assert!(!proves("aaa", &current, Some(&previous)));
        assert!(!proves("", &current, Some(&previous)));
    }
}
