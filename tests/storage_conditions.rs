//! A data directory on a full, read-only or unwritable device: the server
//! says what is wrong and what to do, never that the session is damaged,
//! and once the condition is fixed the session loads whole. The device is
//! a real filesystem: a small tmpfs mounted for the test (this needs root;
//! elsewhere these tests say so and stop, and the conditions are covered
//! by the unit tests of `store::condition`).

mod child;
mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use child::{finish, server_on, start_listening};
use common::{T, block, object};
use replication_serve::client::{Client, ClientOptions};
use replication_serve::protocol::AuthStatus;

/// A tmpfs of a fixed size, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tmpfs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .is_ok_and(|o| o.status.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Self { dir })
    }

    fn remount(&self, option: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{option}")])
            .arg(&self.dir)
            .status()
            .expect("mount");
        assert!(status.success(), "remount {option}");
    }

    /// Writes until the device is full.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 4096];
        while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Records a scene of three datablocks in `data`, and stops the server.
fn record_scene(data: &Path) {
    let mut server = start_listening(false, |port| server_on(data, port, &[]));
    let mut host = server.client(|p| ClientOptions::admin(p, "host", "admin"));
    host.authenticate(T).expect("auth");
    let blocks: Vec<_> = (0..3)
        .map(|i| block(&format!("b{i}"), "Object", object("o", [f64::from(i); 3])))
        .collect();
    host.upload(&blocks, T).expect("upload");
    drop(host);
    server.signal("TERM");
    assert!(server.wait_exit().success(), "{}", server.stderr.text());
}

/// Starts a server on `data` that must refuse to start; returns its log.
fn refused_start(data: &Path, uid: Option<u32>) -> String {
    let mut cmd = server_on(data, common::free_base_port(), &[]);
    if let Some(uid) = uid {
        cmd.uid(uid);
    }
    let run = finish(cmd);
    assert!(!run.status.success(), "it started: {}", run.stderr);
    assert!(
        !run.stderr.contains("damaged"),
        "a storage condition reported as damage:\n{}",
        run.stderr
    );
    run.stderr
}

/// Starts a server on `data` and checks that the whole scene is there.
fn loads_whole(data: &Path) {
    let server = start_listening(false, |port| server_on(data, port, &[]));
    let mut reader = Client::connect(ClientOptions::new(server.port, "reader")).expect("connect");
    assert_eq!(reader.authenticate(T).expect("auth"), AuthStatus::Running);
    assert_eq!(reader.download(T, |_, _| {}).expect("download").len(), 3);
}

#[test]
fn a_full_device_says_how_much_to_free_and_the_session_loads_after() {
    let Some(fs) = Tmpfs::mount("4m") else { return };
    let data = fs.dir.join("data");
    record_scene(&data);
    let filler = fs.fill();
    let log = refused_start(&data, None);
    let expected = format!(
        "no space left on the device holding {}: free ",
        data.display()
    );
    assert!(log.contains(&expected), "{log}");
    std::fs::remove_file(filler).expect("free the space");
    loads_whole(&data);
}

#[test]
fn a_read_only_device_is_named_and_the_session_loads_after() {
    let Some(fs) = Tmpfs::mount("4m") else { return };
    let data = fs.dir.join("data");
    record_scene(&data);
    fs.remount("ro");
    let log = refused_start(&data, None);
    assert!(log.contains("is mounted read-only"), "{log}");
    fs.remount("rw");
    loads_whole(&data);
}

#[test]
fn a_data_directory_the_server_may_not_write_is_named() {
    let Some(fs) = Tmpfs::mount("4m") else { return };
    let data = fs.dir.join("data");
    record_scene(&data);
    // Owned by root, readable by everyone: another user may not write it.
    let log = refused_start(&data, Some(65534));
    assert!(log.contains("(uid 65534) may not write"), "{log}");
    loads_whole(&data);
}
