//! Old Multi-User clients (docs/protocol.md, section 17): their login and
//! server-info request are answered with pre-built frames they can read,
//! and the rest of what they send is dropped. Nothing about them changes
//! any state: no session, no failed login counted.

use foldhash::{HashMap, HashMapExt};

use super::Core;
use super::dispatch::hex;
use crate::protocol::Channel;
use crate::protocol::old_multiuser::OldRequest;
use crate::transport::{Command, Identity};

/// Most old clients remembered at once; when full the memory starts again,
/// so a flood of identities costs at most this much, and a line each.
const MAX_NOTED: usize = 4096;

/// The old clients already written to the log, so that however much one
/// sends, it gets at most one INFO line (when it is told to install the
/// package) and one DEBUG line (when something else of it came first).
#[derive(Debug)]
pub(super) struct NotedClients {
    /// Whether each was told, that is, answered a login.
    told: HashMap<Identity, bool>,
}

/// What the log says about an old client's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Note {
    /// Its first refused login.
    Told,
    /// The first message of a client not told yet.
    Seen,
    Nothing,
}

impl NotedClients {
    pub(super) fn new() -> Self {
        Self {
            told: HashMap::new(),
        }
    }

    fn note(&mut self, identity: &Identity, login: bool) -> Note {
        let known = self.told.get(identity).copied();
        let note = match (known, login) {
            (Some(true), _) | (Some(false), false) => return Note::Nothing,
            (_, true) => Note::Told,
            (None, false) => Note::Seen,
        };
        if known.is_none() && self.told.len() >= MAX_NOTED {
            self.told.clear();
        }
        self.told.insert(identity.clone(), login);
        note
    }
}

impl Core {
    /// A message of an old Multi-User client from an identity without a
    /// session.
    pub(super) async fn old_client(
        &mut self,
        channel: Channel,
        identity: Identity,
        peer_address: Option<String>,
        request: OldRequest,
    ) {
        let peer = peer_address.unwrap_or_else(|| hex(&identity));
        let login = channel == Channel::Commands && request == OldRequest::Login;
        match self.noted_old_clients.note(&identity, login) {
            Note::Told => tracing::info!(
                peer,
                "an old Multi-User client tried to log in; told it to install the \
                 Multi-User package for replication-serve"
            ),
            Note::Seen => tracing::debug!(
                peer,
                channel = channel.name(),
                ?request,
                "a message of an old Multi-User client (its later ones are not logged)"
            ),
            Note::Nothing => {}
        }
        let frames = match (channel, request) {
            (Channel::Commands, OldRequest::Login) => self.old_answers.login(),
            (Channel::Commands, OldRequest::ServerInfo) => self.old_answers.server_info(),
            // Dropped: they cannot read an ERROR.
            _ => return,
        };
        self.send(Command::Frames { identity, frames }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn each_old_client_gets_one_line_of_each_kind_at_most() {
        let mut noted = NotedClients::new();
        let (a, b, c) = (
            Bytes::from_static(b"a"),
            Bytes::from_static(b"b"),
            Bytes::from_static(b"c"),
        );
        assert_eq!(noted.note(&a, true), Note::Told);
        assert_eq!(noted.note(&a, true), Note::Nothing);
        assert_eq!(noted.note(&a, false), Note::Nothing);
        assert_eq!(noted.note(&b, false), Note::Seen);
        assert_eq!(noted.note(&b, false), Note::Nothing);
        assert_eq!(
            noted.note(&b, true),
            Note::Told,
            "a login is always told once"
        );
        assert_eq!(noted.note(&b, true), Note::Nothing);
        assert_eq!(noted.note(&c, false), Note::Seen);
    }

    #[test]
    fn the_memory_is_bounded() {
        let mut noted = NotedClients::new();
        for n in 0..MAX_NOTED * 2 + 1 {
            let identity = Bytes::from(n.to_le_bytes().to_vec());
            assert_eq!(noted.note(&identity, false), Note::Seen);
            assert!(noted.told.len() <= MAX_NOTED);
        }
    }
}
