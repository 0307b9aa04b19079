//! The login throttle counts each secret on its own, and no login that
//! succeeds wipes the record of wrong guesses made from the same address.

mod common;

use common::{T, TestServer};
use replication_serve::client::{Client, ClientError, ClientOptions};

/// The refusal code of a login, or "ok".
fn outcome(options: ClientOptions) -> String {
    let mut client = Client::connect(options).expect("connect");
    match client.authenticate(T) {
        Ok(_) => "ok".into(),
        Err(ClientError::Refused { code, .. }) => code,
        Err(e) => panic!("login failed: {e}"),
    }
}

/// Wrong admin passwords interleaved with logins that succeed: before,
/// each success cleared the address's failures, so the guesses went on at
/// full speed forever. Now the third and later wrong guesses lock the
/// admin password out from this address with waits that double, so some
/// guesses within a quick series are refused without being checked; the
/// logins in between are unaffected.
fn interleaved_guesses_are_throttled(
    configure: impl Fn(&mut replication_serve::config::Config),
    good: impl Fn(u16, usize) -> ClientOptions,
    good_guesses_admin: bool,
) {
    let server = TestServer::start_with(configure);
    let mut refused = 0;
    for round in 0..8 {
        for _ in 0..2 {
            let mut guess = ClientOptions::admin(server.port, &format!("mallory{round}"), "wrong");
            guess.server_password = Some("letmein".into());
            match outcome(guess).as_str() {
                "WrongAdminPassword" => {}
                "TooManyAttempts" => refused += 1,
                other => panic!("unexpected answer to a wrong guess: {other}"),
            }
        }
        let answer = outcome(good(server.port, round));
        // A right admin password is not checked either while the admin
        // password is locked out from this address.
        let locked = good_guesses_admin && answer == "TooManyAttempts";
        assert!(
            answer == "ok" || locked,
            "the good login of round {round}: {answer}"
        );
    }
    assert!(
        refused > 0,
        "16 wrong admin passwords in a row were all checked"
    );
}

#[test]
fn ordinary_logins_do_not_reset_admin_password_failures() {
    interleaved_guesses_are_throttled(
        |_| {},
        |port, round| ClientOptions::new(port, &format!("user{round}")),
        false,
    );
}

#[test]
fn logins_with_the_server_password_do_not_reset_admin_password_failures() {
    interleaved_guesses_are_throttled(
        |c| c.server_password = Some("letmein".into()),
        |port, round| {
            let mut options = ClientOptions::new(port, &format!("user{round}"));
            options.server_password = Some("letmein".into());
            options
        },
        false,
    );
}

#[test]
fn a_right_admin_password_does_not_vouch_for_wrong_ones() {
    interleaved_guesses_are_throttled(
        |_| {},
        |port, round| ClientOptions::admin(port, &format!("admin{round}"), "admin"),
        true,
    );
}

/// Guessing the admin password locks out only guesses at the admin
/// password: users from the same address still log in.
#[test]
fn admin_password_lockouts_leave_ordinary_logins_alone() {
    let server = TestServer::start();
    for _ in 0..6 {
        let code = outcome(ClientOptions::admin(server.port, "mallory", "wrong"));
        assert!(
            ["WrongAdminPassword", "TooManyAttempts"].contains(&code.as_str()),
            "{code}"
        );
    }
    assert_eq!(outcome(ClientOptions::new(server.port, "bob")), "ok");
}

/// Wrong room passwords, interleaved with joins of the same room with its
/// right password, still lock the room out.
#[test]
fn right_room_passwords_do_not_vouch_for_wrong_ones() {
    let server = TestServer::start();
    let mut owner = ClientOptions::admin(server.port, "owner", "admin").in_room("vault");
    owner.room_password = Some("right".into());
    let mut owner = Client::connect(owner).expect("connect");
    owner.authenticate(T).expect("create vault");
    let mut refused = 0;
    for round in 0..8 {
        for _ in 0..2 {
            let mut guess =
                ClientOptions::new(server.port, &format!("guess{round}")).in_room("vault");
            guess.room_password = Some("wrong".into());
            match outcome(guess).as_str() {
                "WrongRoomPassword" => {}
                "TooManyAttempts" => refused += 1,
                other => panic!("unexpected answer to a wrong guess: {other}"),
            }
        }
        let mut member = Client::connect(ClientOptions::new(server.port, &format!("m{round}")))
            .expect("connect");
        member.authenticate(T).expect("auth in the default room");
        let joined = member.join_room("vault", Some("right"), T);
        if let Err(ClientError::Refused { code, .. }) = &joined {
            assert_eq!(code, "TooManyAttempts", "{joined:?}");
        }
    }
    assert!(
        refused > 0,
        "16 wrong room passwords in a row were all checked"
    );
}
