//! Old Multi-User clients: recognising their messages, and the answers
//! they can read.
//!
//! The Multi-User add-on without this project's `replication` package talks
//! to its own servers with pickled frames: `[type, owner, data]`, where
//! `type` is a pickled small integer. Such a client pointed at this server
//! would only ever see an ERROR it cannot decode, and report that no server
//! was found. So the server knows their messages by comparing the first
//! frame with a few constant bytes (it never unpickles anything), and
//! answers the two an artist starts by hand, a login and a server-info
//! request, with frames built here once: pickles of our own constants, the
//! only pickles this server ever writes. Everything else of theirs is
//! dropped (docs/protocol.md, section 17).

use std::sync::Arc;

use bytes::Bytes;

use super::PROTOCOL_VERSION;

/// `pickle.dumps(9, protocol=4)`: the type of their "Auth" message.
const LOGIN: &[u8] = b"\x80\x04K\t.";
/// `pickle.dumps(14, protocol=4)`: the type of their "RequestServerInfo".
const SERVER_INFO: &[u8] = b"\x80\x04K\x0e.";

/// Where artists read how to install the package for replication-serve.
const GUIDE: &str = "docs/blender.md";

/// An old client's message, known from its first frame alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldRequest {
    /// Their login ("Auth"), sent by the add-on's Connect button.
    Login,
    /// Their server-info request, sent when the add-on refreshes its server
    /// list.
    ServerInfo,
    /// Any other of their messages (every type is a pickled small integer).
    Other,
}

/// Recognises an old client's message by its first frame (the one after
/// the routing identity). Such a frame is never a valid header: MessagePack
/// reads its first byte as an empty map, and the rest as trailing bytes.
pub fn recognise(first_frame: &[u8]) -> Option<OldRequest> {
    match first_frame {
        LOGIN => Some(OldRequest::Login),
        SERVER_INFO => Some(OldRequest::ServerInfo),
        // PROTO 4, BININT1 with any type number, STOP.
        [0x80, 0x04, b'K', _, b'.'] => Some(OldRequest::Other),
        _ => None,
    }
}

/// The frames answering an old client, built once per server.
#[derive(Debug, Clone)]
pub struct OldAnswers {
    login: Arc<[Bytes]>,
    server_info: Arc<[Bytes]>,
}

impl OldAnswers {
    /// `private`: whether the server asks for a server password, which the
    /// add-on shows as a lock in its server list.
    pub fn new(private: bool) -> Self {
        Self {
            login: Arc::new([
                pickled_int(9),
                Bytes::from_static(b"server"),
                pickled_str(&refusal()),
            ]),
            server_info: Arc::new([
                pickled_int(14),
                Bytes::from_static(b"server"),
                pickled_info(private, &version()),
            ]),
        }
    }

    /// The answer to a login: a refusal, which the add-on shows the artist
    /// ("authentification refused [...]") before ending its session.
    pub fn login(&self) -> Arc<[Bytes]> {
        self.login.clone()
    }

    /// The answer to a server-info request: the add-on marks the server
    /// online, with a lock when it is private.
    pub fn server_info(&self) -> Arc<[Bytes]> {
        self.server_info.clone()
    }
}

/// The refusal of an old client's login. The add-on ends the session on any
/// answer containing "FAILED", and shows the whole text on one line.
fn refusal() -> String {
    format!(
        "FAILED: this server is replication-serve (protocol v{PROTOCOL_VERSION}), which this \
         Multi-User cannot talk to; install the Multi-User package for replication-serve \
         (see {GUIDE})"
    )
}

/// The server version old clients are shown.
fn version() -> String {
    format!(
        "{} (protocol v{PROTOCOL_VERSION}; see {GUIDE})",
        env!("CARGO_PKG_VERSION")
    )
}

// Pickle opcodes (Python's pickletools documents them). Protocol 2 has
// every one used here, and every Python 3 reads it.
const PROTO: u8 = 0x80;
const PROTOCOL: u8 = 2;
const BININT1: u8 = b'K';
const BINUNICODE: u8 = b'X';
const EMPTY_DICT: u8 = b'}';
const MARK: u8 = b'(';
const SETITEMS: u8 = b'u';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const STOP: u8 = b'.';

fn pickled_int(n: u8) -> Bytes {
    Bytes::from(vec![PROTO, PROTOCOL, BININT1, n, STOP])
}

fn pickled_str(text: &str) -> Bytes {
    let mut out = vec![PROTO, PROTOCOL];
    write_str(&mut out, text);
    out.push(STOP);
    Bytes::from(out)
}

/// `{"private": private, "version": version}`
fn pickled_info(private: bool, version: &str) -> Bytes {
    let mut out = vec![PROTO, PROTOCOL, EMPTY_DICT, MARK];
    write_str(&mut out, "private");
    out.push(if private { NEWTRUE } else { NEWFALSE });
    write_str(&mut out, "version");
    write_str(&mut out, version);
    out.extend_from_slice(&[SETITEMS, STOP]);
    Bytes::from(out)
}

/// BINUNICODE: the UTF-8 bytes after their length, 4 bytes little-endian.
/// Only this module's own short texts come here.
fn write_str(out: &mut Vec<u8>, text: &str) {
    let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
    out.push(BINUNICODE);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_clients_are_known_by_their_first_frame_only() {
        assert_eq!(recognise(b"\x80\x04K\t."), Some(OldRequest::Login));
        assert_eq!(recognise(b"\x80\x04K\x0e."), Some(OldRequest::ServerInfo));
        // Their "Snapshot" (7) and "Disconnect" (10).
        assert_eq!(recognise(b"\x80\x04K\x07."), Some(OldRequest::Other));
        assert_eq!(recognise(b"\x80\x04K\n."), Some(OldRequest::Other));
        for frame in [
            &b""[..],
            b"\x80\x04K\t",
            b"\x80\x04K\t..",
            b"\x80\x03K\t.",
            b"\x80\x04M\t\x00.",
            // A header: {"type": "AUTH"}.
            b"\x81\xa4type\xa4AUTH",
            b"\x80",
        ] {
            assert_eq!(recognise(frame), None, "{frame:?}");
        }
    }

    #[test]
    fn the_login_answer_is_a_refusal_in_pickles() {
        let answer = OldAnswers::new(false).login();
        let [kind, owner, data] = &answer[..] else {
            panic!("three frames, not {}", answer.len());
        };
        // PROTO 2, BININT1 9, STOP.
        assert_eq!(&kind[..], b"\x80\x02K\x09.");
        assert_eq!(&owner[..], b"server");
        let text = format!(
            "FAILED: this server is replication-serve (protocol v{PROTOCOL_VERSION}), which this \
             Multi-User cannot talk to; install the Multi-User package for \
             replication-serve (see docs/blender.md)"
        );
        assert!(
            text.len() < 200,
            "one line of a dialog: {} bytes",
            text.len()
        );
        let mut expected = vec![0x80, 0x02]; // PROTO 2
        expected.push(b'X'); // BINUNICODE: u32 length, little-endian, then UTF-8
        expected.extend_from_slice(&(text.len() as u32).to_le_bytes());
        expected.extend_from_slice(text.as_bytes());
        expected.push(b'.'); // STOP
        assert_eq!(&data[..], &expected[..]);
    }

    #[test]
    fn the_server_info_answer_is_a_dict_in_pickles() {
        let version = format!(
            "{} (protocol v{PROTOCOL_VERSION}; see docs/blender.md)",
            env!("CARGO_PKG_VERSION")
        );
        for (private, flag) in [(false, 0x89), (true, 0x88)] {
            let answer = OldAnswers::new(private).server_info();
            let [kind, owner, data] = &answer[..] else {
                panic!("three frames, not {}", answer.len());
            };
            // PROTO 2, BININT1 14, STOP.
            assert_eq!(&kind[..], b"\x80\x02K\x0e.");
            assert_eq!(&owner[..], b"server");
            let mut expected = vec![
                0x80, 0x02, // PROTO 2
                b'}', // EMPTY_DICT
                b'(', // MARK: the key-value pairs follow
                b'X', 7, 0, 0, 0, // BINUNICODE of 7 bytes
            ];
            expected.extend_from_slice(b"private");
            expected.push(flag); // NEWFALSE (0x89) or NEWTRUE (0x88)
            expected.extend_from_slice(&[b'X', 7, 0, 0, 0]); // BINUNICODE of 7 bytes
            expected.extend_from_slice(b"version");
            expected.push(b'X'); // BINUNICODE
            expected.extend_from_slice(&(version.len() as u32).to_le_bytes());
            expected.extend_from_slice(version.as_bytes());
            expected.push(b'u'); // SETITEMS: the pairs since MARK go into the dict
            expected.push(b'.'); // STOP
            assert_eq!(&data[..], &expected[..], "private: {private}");
        }
    }

    #[test]
    fn answers_are_built_once_and_shared() {
        let answers = OldAnswers::new(false);
        assert!(Arc::ptr_eq(&answers.login(), &answers.login()));
        assert!(Arc::ptr_eq(&answers.server_info(), &answers.server_info()));
    }
}
