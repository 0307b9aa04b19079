//! The binary and its secrets: the key pair made on first start and shown
//! (at start, by --print-public-key, by the console), refusals logged by
//! fingerprint, and no password or key where others can read it: the
//! process list, the log, --print-config, the data directory.

mod child;
mod common;
use child::*;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use replication_serve::client::{Client, ClientError, ClientOptions, ServerTrust};
use replication_serve::protocol::AuthStatus;
use replication_serve::security::key::{KeyPair, PublicKey};

const ADMIN: &str = "an-admin-password-for-this-test";
const SERVER: &str = "a-server-password-for-this-test";
const ROOM: &str = "a-room-password-for-this-test";

/// The binary's own first lines on stdout: the public key and fingerprint.
fn announced_key(server: &Server) -> (PublicKey, String) {
    let line = server.stdout.expect_from(0, "the public key", |l| {
        l.starts_with("server public key: ")
    });
    // The two lines are written one after the other; the second may not
    // have been read from the pipe yet when the first is seen.
    let second = server
        .stdout
        .expect_from(line, "the fingerprint", |l| l.starts_with("fingerprint:"));
    let lines = server.stdout.snapshot();
    let key: PublicKey = lines[line]
        .trim_start_matches("server public key: ")
        .parse()
        .expect("a key");
    let fingerprint = lines[second]
        .trim_start_matches("fingerprint:")
        .trim()
        .to_owned();
    (key, fingerprint)
}

#[test]
fn the_key_is_made_on_first_start_kept_private_and_shown_everywhere() {
    let data = tempfile::tempdir().unwrap();
    let printed = finish({
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_replication-serve"));
        cmd.args(["--print-public-key", "--data-dir"])
            .arg(data.path());
        cmd
    });
    assert!(printed.status.success(), "{}", printed.stderr);
    let key_file = data.path().join("server.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "owner only");
    let pair = KeyPair::load(&key_file).unwrap();
    let key = pair.public();
    assert_eq!(
        printed.stdout,
        format!("{key}\nfingerprint {}", key.fingerprint())
    );

    // The server started on that directory uses the same key, and says so.
    let mut server = start_listening(true, |port| {
        server_on(data.path(), port, &["--encryption", "required"])
    });
    let (announced, fingerprint) = announced_key(&server);
    assert_eq!(announced, key);
    assert_eq!(fingerprint, key.fingerprint());
    server
        .stderr
        .expect_from(0, "the fingerprint in the log", |l| {
            l.contains(&format!("fingerprint={}", key.fingerprint()))
        });
    let from = server.stdout.len();
    server.console("key");
    server
        .stdout
        .expect_from(from, "the console's key", |l| l.contains(&key.to_text()));
    server.stdout.expect_from(from, "and its fingerprint", |l| {
        l.contains(&key.fingerprint())
    });
    let secret = secret_text(&key_file);
    assert!(!server.stdout.text().contains(&secret));
    assert!(!server.stderr.text().contains(&secret));
    assert!(
        !server.stderr.text().contains(&key.to_text()),
        "the log has the fingerprint only"
    );

    // The health check, run from a user's machine, shows it too.
    let checked = finish({
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_replication-serve"));
        cmd.args(["--health-check", "-p", &server.port.to_string()]);
        cmd
    });
    assert!(checked.status.success(), "{}", checked.stderr);
    assert!(
        checked
            .stdout
            .contains(&format!("encrypted, fingerprint {}", key.fingerprint())),
        "{}",
        checked.stdout
    );

    // A key file others can read is refused, as SSH refuses such keys.
    drop(server);
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = finish(server_on(
        data.path(),
        free_base_port(),
        &["--encryption", "required"],
    ));
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("chmod 600"), "{}", refused.stderr);
}

fn secret_text(key_file: &Path) -> String {
    let text = std::fs::read_to_string(key_file).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("secret_key = "))
        .expect("a secret key line")
        .trim_matches('"')
        .to_owned()
}

#[test]
fn refused_client_keys_are_logged_by_fingerprint_and_the_list_reloads_on_command() {
    let data = tempfile::tempdir().unwrap();
    let list = data.path().join("authorized_keys");
    let alice = KeyPair::generate().unwrap();
    let mallory = KeyPair::generate().unwrap();
    std::fs::write(&list, format!("{} alice\n", alice.public())).unwrap();
    let list_arg = list.to_string_lossy().into_owned();
    let mut server = start_listening(true, |port| {
        server_on(
            data.path(),
            port,
            &["--encryption", "required", "--authorized-keys", &list_arg],
        )
    });
    let (key, _) = announced_key(&server);
    let port = server.port;
    let as_user = |name: &str, pair: &KeyPair| ClientOptions {
        client_key: Some(pair.clone()),
        ..ClientOptions::new(port, name).trusting(ServerTrust::Key(key))
    };
    let mut refused = Client::connect(as_user("mallory", &mallory)).unwrap();
    let error = refused
        .authenticate(std::time::Duration::from_secs(5))
        .err();
    assert!(
        matches!(error, Some(ClientError::KeyNotAdmitted(_))),
        "{error:?}"
    );
    server
        .stderr
        .expect_from(0, "the refusal, by fingerprint", |l| {
            l.contains("refused a client key") && l.contains(&mallory.public().fingerprint())
        });
    assert!(!server.stderr.text().contains(&mallory.public().to_text()));

    // Listed, then read again at once by the console's reload-keys.
    std::fs::write(
        &list,
        format!("{} alice\n{} mallory\n", alice.public(), mallory.public()),
    )
    .unwrap();
    let from = server.stdout.len();
    server.console("reload-keys");
    server.stdout.expect_from(from, "the reload", |l| {
        l.contains("2 authorized keys in force")
    });
    let mut admitted = Client::connect(as_user("mallory", &mallory)).unwrap();
    assert_eq!(admitted.authenticate(T).unwrap(), AuthStatus::Lobby);

    // A list that no longer reads keeps the old one in force.
    std::fs::write(&list, "not a key\n").unwrap();
    let from = server.stdout.len();
    server.console("reload-keys");
    server
        .stdout
        .expect_from(from, "the bad line named", |l| l.contains("line 1"));
    let mut still = Client::connect(as_user("alice", &alice)).unwrap();
    assert_eq!(still.authenticate(T).unwrap(), AuthStatus::Lobby);
}

#[test]
fn no_password_shows_in_the_process_list_the_log_the_configuration_or_the_data() {
    let data = tempfile::tempdir().unwrap();
    let log_file = data.path().join("server.log");
    let log_arg = log_file.to_string_lossy().into_owned();
    let server = start_listening(false, |port| {
        let mut cmd = server_on(
            data.path(),
            port,
            &[
                "-spwd",
                SERVER,
                "-lf",
                &log_arg,
                "-l",
                "DEBUG",
                "--open-rooms",
            ],
        );
        // The last -pwd wins: the test's own admin password.
        cmd.args(["-pwd", ADMIN]);
        cmd
    });
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.pid())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        !cmdline.contains(ADMIN) && !cmdline.contains(SERVER),
        "{cmdline}"
    );
    assert!(
        cmdline.contains("--open-rooms"),
        "the other options stay: {cmdline}"
    );

    // The passwords still work, from the environment now.
    let with = |options: ClientOptions| ClientOptions {
        server_password: Some(SERVER.into()),
        ..options
    };
    let mut admin = server.client(|p| with(ClientOptions::admin(p, "boss", ADMIN)));
    admin.authenticate(T).expect("the admin password works");
    let mut owner = server.client(|p| ClientOptions {
        room_password: Some(ROOM.into()),
        ..with(ClientOptions::new(p, "owner").in_room("vault"))
    });
    assert_eq!(owner.authenticate(T).expect("room made"), AuthStatus::Lobby);
    let mut wrong = server.client(|p| ClientOptions {
        room_password: Some("a guess".into()),
        ..with(ClientOptions::new(p, "guesser").in_room("vault"))
    });
    assert!(wrong.authenticate(T).is_err());
    drop(server);

    let mut everything = Vec::new();
    for entry in walk(data.path()) {
        everything.extend(std::fs::read(entry).unwrap_or_default());
    }
    for secret in [ADMIN, SERVER, ROOM] {
        assert!(
            !everything
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "{secret} is in the data directory or the log"
        );
    }

    let printed = finish({
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_replication-serve"));
        cmd.args(["--print-config", "-pwd", ADMIN, "-spwd", SERVER]);
        cmd
    });
    assert!(printed.status.success(), "{}", printed.stderr);
    assert!(!printed.stdout.contains(ADMIN) && !printed.stdout.contains(SERVER));
    assert!(
        printed.stdout.contains("encryption = \"on\""),
        "{}",
        printed.stdout
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
