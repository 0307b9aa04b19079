//! Measures embedded storage crates for durable replication sessions.
//!
//! For each candidate crate and durability mode:
//!
//! - update throughput: a 10,000-datablock scene (1 KiB values) is loaded,
//!   then 100,000 updates of random datablocks are made durable one by one
//!   (or 64 at a time in the group-commit modes), as the server would before
//!   forwarding each change; reported as updates/s and p50/p99 latency;
//! - disk use while open after the updates, and after the crate's compaction;
//! - recovery after a clean close: open the store and read every value
//!   (page cache dropped first when the machine allows it);
//! - recovery after `kill -9`: this program re-runs itself as a child writer
//!   that prints each revision after its commit returns, SIGKILLs it
//!   mid-stream, reopens the store and checks that every acknowledged
//!   revision is there.
//!
//! Usage: `cargo run --release --manifest-path bench-storage/Cargo.toml --
//! [--updates N] [--cap-secs S] [--kills K] [--only SUBSTRING] [--dir DIR]`

use std::{
    error::Error,
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::{fs::MetadataExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Datablocks in the scene.
const KEYS: usize = 10_000;
/// Bytes of each value.
const VALUE_LEN: usize = 1024;
/// Updates per commit in the group-commit modes.
const GROUP: usize = 64;
/// Background fsync period of the default modes (the power-loss window).
const SYNC_INTERVAL: Duration = Duration::from_millis(100);
const SEED: u64 = 0x5eed_b1e9_d47a_0001;
/// A killed child writes at most this many updates.
const CHILD_MAX_UPDATES: usize = 3_000_000;

// ---------------------------------------------------------------- modes

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    FjallDefault,
    FjallStrict,
    FjallGroup,
    RedbImmediate,
    RedbGroup,
    RedbNonePeriodic,
    SqliteNormal,
    SqliteFull,
    SqliteGroup,
}

impl Mode {
    const ALL: [Mode; 9] = [
        Mode::FjallDefault,
        Mode::FjallStrict,
        Mode::FjallGroup,
        Mode::RedbImmediate,
        Mode::RedbGroup,
        Mode::RedbNonePeriodic,
        Mode::SqliteNormal,
        Mode::SqliteFull,
        Mode::SqliteGroup,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::FjallDefault => "fjall-default",
            Mode::FjallStrict => "fjall-strict",
            Mode::FjallGroup => "fjall-group",
            Mode::RedbImmediate => "redb-immediate",
            Mode::RedbGroup => "redb-group",
            Mode::RedbNonePeriodic => "redb-none-periodic",
            Mode::SqliteNormal => "sqlite-normal",
            Mode::SqliteFull => "sqlite-full",
            Mode::SqliteGroup => "sqlite-group",
        }
    }

    fn from_name(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }

    fn crate_name(self) -> &'static str {
        match self {
            Mode::FjallDefault | Mode::FjallStrict | Mode::FjallGroup => "fjall 3.1",
            Mode::RedbImmediate | Mode::RedbGroup | Mode::RedbNonePeriodic => "redb 4.4",
            Mode::SqliteNormal | Mode::SqliteFull | Mode::SqliteGroup => {
                "rusqlite 0.41 (SQLite, WAL)"
            }
        }
    }

    /// What a commit does in this mode.
    fn describe(self) -> &'static str {
        match self {
            Mode::FjallDefault => {
                "default: journal written to the OS per update (PersistMode::Buffer), fdatasync every 100 ms in a thread"
            }
            Mode::FjallStrict => "strict: fdatasync per update (PersistMode::SyncData)",
            Mode::FjallGroup => "group: 64 updates per batch, one fdatasync",
            Mode::RedbImmediate => "Durability::Immediate per update (fsync per commit)",
            Mode::RedbGroup => "group: 64 updates per transaction, Durability::Immediate",
            Mode::RedbNonePeriodic => {
                "Durability::None per update, an Immediate commit every 100 ms"
            }
            Mode::SqliteNormal => {
                "default: synchronous=NORMAL (WAL written to the OS per commit), WAL fdatasync every 100 ms in a thread"
            }
            Mode::SqliteFull => "strict: synchronous=FULL (WAL fsync per commit)",
            Mode::SqliteGroup => "group: 64 updates per transaction, synchronous=FULL",
        }
    }

    fn group(self) -> usize {
        match self {
            Mode::FjallGroup | Mode::RedbGroup | Mode::SqliteGroup => GROUP,
            _ => 1,
        }
    }
}

// ---------------------------------------------------------------- data

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The datablock touched by update `j` (0-based, after the scene load).
fn key_of(j: usize) -> usize {
    (splitmix(SEED ^ (j as u64)) % KEYS as u64) as usize
}

/// Revision written by update `j`; the scene load writes revisions 1..=KEYS.
fn rev_of(j: usize) -> u64 {
    (KEYS + j + 1) as u64
}

/// A uuid-shaped 36-byte key.
fn key(k: usize) -> Vec<u8> {
    format!(
        "{k:08x}-0000-4000-8000-{:012x}",
        splitmix(k as u64) & 0xffff_ffff_ffff
    )
    .into_bytes()
}

fn key_index(key: &[u8]) -> Option<usize> {
    let s = std::str::from_utf8(key.get(..8)?).ok()?;
    usize::from_str_radix(s, 16).ok()
}

fn checksum(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for chunk in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(w))
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(29);
    }
    h
}

/// 1 KiB of incompressible data: revision, datablock, noise, checksum.
fn value(rev: u64, k: usize) -> Vec<u8> {
    let mut v = vec![0u8; VALUE_LEN];
    v[0..8].copy_from_slice(&rev.to_le_bytes());
    v[8..12].copy_from_slice(&(k as u32).to_le_bytes());
    let mut s = rev ^ SEED;
    for chunk in v[12..VALUE_LEN - 8].chunks_mut(8) {
        s = splitmix(s);
        let n = chunk.len();
        chunk.copy_from_slice(&s.to_le_bytes()[..n]);
    }
    let h = checksum(&v[..VALUE_LEN - 8]);
    v[VALUE_LEN - 8..].copy_from_slice(&h.to_le_bytes());
    v
}

/// Revision stored in a value, if the value is intact and belongs to `k`.
fn decode(k: usize, v: &[u8]) -> Option<u64> {
    if v.len() != VALUE_LEN {
        return None;
    }
    let h = u64::from_le_bytes(v[VALUE_LEN - 8..].try_into().ok()?);
    if h != checksum(&v[..VALUE_LEN - 8]) {
        return None;
    }
    let vk = u32::from_le_bytes(v[8..12].try_into().ok()?) as usize;
    (vk == k).then(|| u64::from_le_bytes(v[0..8].try_into().unwrap()))
}

fn scene() -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..KEYS)
        .map(|k| (key(k), value(k as u64 + 1, k)))
        .collect()
}

/// Revision of each datablock once updates `0..n` are applied.
fn expected_after(n: usize) -> Vec<u64> {
    let mut e: Vec<u64> = (1..=KEYS as u64).collect();
    for j in 0..n {
        e[key_of(j)] = rev_of(j);
    }
    e
}

#[derive(Default, Debug)]
struct Check {
    missing: usize,
    corrupt: usize,
    /// Stored revision older than the acknowledged one: a loss.
    lost: usize,
    /// Stored revision newer than the acknowledged one (committed, not yet acknowledged).
    ahead: usize,
}

fn verify(all: &[(Vec<u8>, Vec<u8>)], expect: &[u64]) -> Check {
    let mut c = Check::default();
    let mut seen = vec![false; KEYS];
    for (kb, vb) in all {
        let Some(k) = key_index(kb).filter(|&k| k < KEYS) else {
            c.corrupt += 1;
            continue;
        };
        seen[k] = true;
        match decode(k, vb) {
            None => c.corrupt += 1,
            Some(r) if r < expect[k] => c.lost += 1,
            Some(r) if r > expect[k] => c.ahead += 1,
            Some(_) => {}
        }
    }
    c.missing = seen.iter().filter(|s| !**s).count();
    c
}

// ---------------------------------------------------------------- stores

trait Store {
    /// Makes `items` durable as the mode requires, as one commit.
    fn commit(&mut self, items: &[(Vec<u8>, Vec<u8>)]) -> Res<()>;
    /// Loads `items` as one commit, fsynced whatever the mode.
    fn load(&mut self, items: &[(Vec<u8>, Vec<u8>)]) -> Res<()>;
    fn read_all(&mut self) -> Res<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Whatever compaction the crate offers, run to the end.
    fn compact(&mut self) -> Res<()>;
}

fn open(mode: Mode, dir: &Path) -> Res<Box<dyn Store>> {
    Ok(match mode {
        Mode::FjallDefault | Mode::FjallStrict | Mode::FjallGroup => {
            Box::new(FjallStore::open(mode, dir)?)
        }
        Mode::RedbImmediate | Mode::RedbGroup | Mode::RedbNonePeriodic => {
            Box::new(RedbStore::open(mode, dir)?)
        }
        Mode::SqliteNormal | Mode::SqliteFull | Mode::SqliteGroup => {
            Box::new(SqliteStore::open(mode, dir)?)
        }
    })
}

/// A thread that calls `f` every SYNC_INTERVAL until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(mut f: impl FnMut() + Send + 'static) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = thread::spawn(move || {
            loop {
                thread::sleep(SYNC_INTERVAL);
                if s.load(Ordering::Relaxed) {
                    break;
                }
                f();
            }
        });
        Ticker {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct FjallStore {
    // Declared first so it stops (and drops its database handle) first.
    _syncer: Option<Ticker>,
    mode: Mode,
    ks: fjall::Keyspace,
    db: fjall::Database,
}

impl FjallStore {
    fn open(mode: Mode, dir: &Path) -> Res<FjallStore> {
        let db = fjall::Database::builder(dir.join("fjall")).open()?;
        let ks = db.keyspace("datablocks", fjall::KeyspaceCreateOptions::default)?;
        let syncer = (mode == Mode::FjallDefault).then(|| {
            let db = db.clone();
            Ticker::start(move || {
                db.persist(fjall::PersistMode::SyncData)
                    .expect("fjall persist");
            })
        });
        Ok(FjallStore {
            _syncer: syncer,
            mode,
            ks,
            db,
        })
    }

    fn write(&self, items: &[(Vec<u8>, Vec<u8>)], sync: bool) -> Res<()> {
        // db.batch() persists with PersistMode::Buffer (write to the OS) by default.
        let mut b = self.db.batch();
        if sync {
            b = b.durability(Some(fjall::PersistMode::SyncData));
        }
        for (k, v) in items {
            b.insert(&self.ks, k.as_slice(), v.as_slice());
        }
        b.commit()?;
        Ok(())
    }
}

impl Store for FjallStore {
    fn commit(&mut self, items: &[(Vec<u8>, Vec<u8>)]) -> Res<()> {
        self.write(items, self.mode != Mode::FjallDefault)
    }

    fn load(&mut self, items: &[(Vec<u8>, Vec<u8>)]) -> Res<()> {
        self.write(items, true)
    }

    fn read_all(&mut self) -> Res<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::with_capacity(KEYS);
        for g in self.ks.iter() {
            let (k, v) = g.into_inner()?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn compact(&mut self) -> Res<()> {
        // Flush the memtable to a table so the journals can go, then merge all tables.
        self.ks.rotate_memtable_and_wait()?;
        self.ks.major_compact()?;
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }
}

const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("datablocks");

struct RedbStore {
    mode: Mode,
    db: redb::Database,
    last_durable: Instant,
}

impl RedbStore {
    fn open(mode: Mode, dir: &Path) -> Res<RedbStore> {
        let db = redb::Database::create(dir.join("redb.db"))?;
        Ok(RedbStore {
            mode,
            db,
            last_durable: Instant::now(),
        })
    }

    fn write(&mut self, items: &[(Vec<u8>, Vec<u8>)], durable: bool) -> Res<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        })?;
        {
            let mut t = tx.open_table(REDB_TABLE)?;
            for (k, v) in items {
                t.insert(k.as_slice(), v.as_slice())?;
            }
        }
        tx.commit()?;
        if durable {
            self.last_durable = Instant::now();
        }
        Ok(())
    }
}

impl Store for RedbStore {
    fn commit(&mut self, items: &[(Vec<u8>, Vec<u8>)]) -> Res<()> {
        let durable =
            self.mode != Mode::RedbNonePeriodic || self.last_durable.elapsed() >= SYNC_INTERVAL;
        self.write(items, durable)
    }

    fn load(&mut self, items: &[(Vec<u8>, Vec<u8>)]) -> Res<()> {
        self.write(items, true)
    }

    fn read_all(&mut self) -> Res<Vec<(Vec<u8>, Vec<u8>)>> {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REDB_TABLE)?;
        let mut out = Vec::with_capacity(KEYS);
        for r in t.iter()? {
            let (k, v) = r?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn compact(&mut self) -> Res<()> {
        // A last durable commit, then compact until nothing moves.
        self.write(&[], true)?;
        while self.db.compact()? {}
        Ok(())
    }
}

struct SqliteStore {
    _syncer: Option<Ticker>,
    mode: Mode,
    conn: rusqlite::Connection,
}

const SQL_UPSERT: &str = "INSERT INTO datablocks(uuid, data) VALUES (?1, ?2) \
                          ON CONFLICT(uuid) DO UPDATE SET data = excluded.data";

impl SqliteStore {
    fn open(mode: Mode, dir: &Path) -> Res<SqliteStore> {
        let path = dir.join("sqlite.db");
        let conn = rusqlite::Connection::open(&path)?;
        let jm: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        assert_eq!(jm, "wal");
        conn.pragma_update(
            None,
            "synchronous",
            if mode == Mode::SqliteNormal {
                "NORMAL"
            } else {
                "FULL"
            },
        )?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS datablocks(uuid BLOB PRIMARY KEY, data BLOB NOT NULL)",
        )?;
        let syncer = (mode == Mode::SqliteNormal).then(|| {
            // fsync of the WAL file from another descriptor: the same pages reach the disk.
            let wal = dir.join("sqlite.db-wal");
            Ticker::start(move || {
                if let Ok(f) = fs::File::open(&wal) {
                    let _ = f.sync_data();
                }
            })
        });
        Ok(SqliteStore {
            _syncer: syncer,
            mode,
            conn,
        })
    }

    fn write(&mut self, items: &[(Vec<u8>, Vec<u8>)]) -> Res<()> {
        if let [(k, v)] = items {
            self.conn.prepare_cached(SQL_UPSERT)?.execute((k, v))?;
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(SQL_UPSERT)?;
            for (k, v) in items {
                st.execute((k, v))?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl Store for SqliteStore {
    fn commit(&mut self, items: &[(Vec<u8>, Vec<u8>)]) -> Res<()> {
        self.write(items)
    }

    fn load(&mut self, items: &[(Vec<u8>, Vec<u8>)]) -> Res<()> {
        self.write(items)?;
        if self.mode == Mode::SqliteNormal {
            // NORMAL does not fsync at commit: checkpoint so the scene is on disk.
            self.conn
                .query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))?;
        }
        Ok(())
    }

    fn read_all(&mut self) -> Res<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut st = self.conn.prepare("SELECT uuid, data FROM datablocks")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::with_capacity(KEYS);
        for r in rows {
            out.push(r?);
        }
        Ok(out)
    }

    fn compact(&mut self) -> Res<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        self.conn.execute_batch("VACUUM")?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

// ---------------------------------------------------------------- helpers

/// (allocated bytes, apparent bytes) of everything under `dir`.
fn disk_use(dir: &Path) -> (u64, u64) {
    let mut alloc = 0;
    let mut len = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                alloc += m.blocks() * 512;
                len += m.len();
            }
        }
    }
    (alloc, len)
}

/// Drops the page cache so reads come from the disk; false where not allowed.
fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Prints every file under `dir` with its allocated and apparent size (to stderr).
fn list_files(label: &str, dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files.push((e.path(), m.blocks() * 512, m.len()));
            }
        }
    }
    files.sort();
    eprintln!("--- {label}: {}", dir.display());
    for (p, a, l) in files {
        let rel = p.strip_prefix(dir).unwrap_or(&p);
        eprintln!("    {:>10} {:>10}  {}", a, l, rel.display());
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn fresh_dir(p: &Path) -> Res<()> {
    if p.exists() {
        fs::remove_dir_all(p)?;
    }
    fs::create_dir_all(p)?;
    Ok(())
}

fn batch(j: usize, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (j..j + n)
        .map(|jj| {
            let k = key_of(jj);
            (key(k), value(rev_of(jj), k))
        })
        .collect()
}

// ---------------------------------------------------------------- runs

struct Throughput {
    updates: usize,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    disk_open: (u64, u64),
    disk_closed: (u64, u64),
    disk_compacted: (u64, u64),
    compact_secs: f64,
    recovery_ms: f64,
    recovery_check: Check,
}

fn run_throughput(
    mode: Mode,
    dir: &Path,
    updates: usize,
    cap: Duration,
    list: bool,
) -> Res<Throughput> {
    fresh_dir(dir)?;
    let mut store = open(mode, dir)?;
    store.load(&scene())?;
    let group = mode.group();
    let mut lat: Vec<u64> = Vec::with_capacity(updates);
    let start = Instant::now();
    let mut j = 0;
    while j < updates && start.elapsed() < cap {
        let n = group.min(updates - j);
        let items = batch(j, n);
        let t0 = Instant::now();
        store.commit(&items)?;
        let d = t0.elapsed().as_nanos() as u64;
        lat.extend(std::iter::repeat_n(d, n));
        j += n;
    }
    let secs = start.elapsed().as_secs_f64();
    let disk_open = disk_use(dir);
    drop(store);
    let disk_closed = disk_use(dir);
    if list {
        list_files("after close", dir);
    }

    let cold = drop_caches();
    let t = Instant::now();
    let mut store = open(mode, dir)?;
    let all = store.read_all()?;
    let recovery_ms = t.elapsed().as_secs_f64() * 1000.0;
    let recovery_check = verify(&all, &expected_after(j));
    drop(all);
    let _ = cold;

    let t = Instant::now();
    store.compact()?;
    drop(store);
    let compact_secs = t.elapsed().as_secs_f64();
    let disk_compacted = disk_use(dir);
    if list {
        list_files("after compaction", dir);
    }
    // The compacted store must still hold the scene.
    let mut store = open(mode, dir)?;
    let after = verify(&store.read_all()?, &expected_after(j));
    drop(store);
    if after.lost + after.missing + after.corrupt > 0 {
        return Err(format!("{}: compaction lost data: {after:?}", mode.name()).into());
    }

    lat.sort_unstable();
    Ok(Throughput {
        updates: j,
        secs,
        p50_us: pct(&lat, 0.50),
        p99_us: pct(&lat, 0.99),
        max_us: lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        disk_open,
        disk_closed,
        disk_compacted,
        compact_secs,
        recovery_ms,
        recovery_check,
    })
}

struct KillRun {
    acked: usize,
    killed: bool,
    recovery_ms: f64,
    check: Check,
    journal_mib: f64,
}

/// The child writer: fresh store, durable scene, "ready", then updates, each
/// acknowledged on stdout after its commit returns.
fn child(mode: Mode, dir: &Path) -> Res<()> {
    fresh_dir(dir)?;
    let mut store = open(mode, dir)?;
    store.load(&scene())?;
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let group = mode.group();
    let mut j = 0;
    while j < CHILD_MAX_UPDATES {
        let items = batch(j, group);
        store.commit(&items)?;
        j += group;
        // Number of updates acknowledged so far.
        writeln!(out, "{j}")?;
        out.flush()?;
    }
    Ok(())
}

fn run_kill(mode: Mode, dir: &Path, trial: u64) -> Res<KillRun> {
    fresh_dir(dir)?;
    let exe = std::env::current_exe()?;
    let mut proc = Command::new(exe)
        .arg("--child")
        .arg(mode.name())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = proc.stdout.take().expect("piped");
    // Kill 0.3 to 1.5 s after the scene is loaded.
    let delay = Duration::from_millis(300 + splitmix(SEED ^ trial ^ ((mode as u64) << 32)) % 1200);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let killer = thread::spawn(move || {
        let ready = ready_rx.recv().is_ok();
        if ready {
            thread::sleep(delay);
        }
        let _ = proc.kill(); // SIGKILL
        proc.wait()
    });
    let mut acked = 0usize;
    let mut ready_tx = Some(ready_tx);
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line == "ready" {
            if let Some(tx) = ready_tx.take() {
                let _ = tx.send(());
            }
        } else if let Ok(n) = line.parse::<usize>() {
            acked = acked.max(n);
        }
    }
    drop(ready_tx);
    let status = killer.join().expect("killer thread")?;
    let killed = status.signal() == Some(9);
    let journal_mib = mib(disk_use(dir).0);

    drop_caches();
    let t = Instant::now();
    let mut store = open(mode, dir)?;
    let all = store.read_all()?;
    let recovery_ms = t.elapsed().as_secs_f64() * 1000.0;
    let check = verify(&all, &expected_after(acked));
    drop(store);
    fs::remove_dir_all(dir)?;
    Ok(KillRun {
        acked,
        killed,
        recovery_ms,
        check,
        journal_mib,
    })
}

/// fdatasync of 1 KiB appends on this disk: the floor of any strict mode.
fn raw_fdatasync(dir: &Path) -> Res<(f64, f64)> {
    fresh_dir(dir)?;
    let path = dir.join("fsync-probe");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let buf = vec![7u8; VALUE_LEN];
    let mut lat = Vec::new();
    for _ in 0..200 {
        f.write_all(&buf)?;
        let t = Instant::now();
        f.sync_data()?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    fs::remove_dir_all(dir)?;
    lat.sort_unstable();
    Ok((pct(&lat, 0.5), pct(&lat, 0.99)))
}

fn machine(dir: &Path) -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    // File system of the longest mount point containing dir.
    let canon = fs::canonicalize(dir).unwrap_or(dir.to_path_buf());
    let mut fsinfo = String::new();
    let mut best = 0;
    for l in fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
    {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 2 && canon.starts_with(f[1]) && f[1].len() >= best {
            best = f[1].len();
            fsinfo = format!("{} on {} ({})", f[2], f[0], f[1]);
        }
    }
    format!(
        "{cpu}, {cores} cores, {mem_gib:.0} GiB, Linux {}, {fsinfo}",
        kernel.trim()
    )
}

// ---------------------------------------------------------------- main

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let mode = Mode::from_name(&args[1]).ok_or("unknown mode")?;
        return child(mode, Path::new(&args[2]));
    }
    let mut updates = 100_000usize;
    let mut cap = Duration::from_secs(25);
    let mut kills = 3u64;
    let mut only: Option<String> = None;
    let mut list = false;
    let mut base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--updates" => updates = val()?.parse()?,
            "--cap-secs" => cap = Duration::from_secs(val()?.parse()?),
            "--kills" => kills = val()?.parse()?,
            "--only" => only = Some(val()?),
            "--dir" => base = PathBuf::from(val()?),
            "--list-files" => list = true,
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    fs::create_dir_all(&base)?;
    let modes: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|m| only.as_ref().is_none_or(|o| m.name().contains(o.as_str())))
        .collect();

    let started = Instant::now();
    let cold = drop_caches();
    let (fs50, fs99) = raw_fdatasync(&base.join("probe"))?;
    println!("machine: {}", machine(&base));
    println!("data directory: {}", base.display());
    println!("raw fdatasync of a 1 KiB append: p50 {fs50:.0} µs, p99 {fs99:.0} µs");
    println!(
        "recovery reads: {}",
        if cold {
            "page cache dropped before each open (cold)"
        } else {
            "page cache NOT dropped (warm): no permission"
        }
    );
    println!(
        "workload: {KEYS} datablocks x {VALUE_LEN} B loaded in one commit, then {updates} updates of random datablocks \
         (capped at {} s per mode); group modes commit {GROUP} updates at a time",
        cap.as_secs()
    );
    println!();

    let mut results = Vec::new();
    for &m in &modes {
        eprintln!(
            "[{:>5.1}s] throughput {}",
            started.elapsed().as_secs_f64(),
            m.name()
        );
        let probe = raw_fdatasync(&base.join("probe"))?;
        let r = run_throughput(m, &base.join(m.name()), updates, cap, list)?;
        fs::remove_dir_all(base.join(m.name()))?;
        let mut k = Vec::new();
        for t in 0..kills {
            eprintln!(
                "[{:>5.1}s] kill -9 {} #{t}",
                started.elapsed().as_secs_f64(),
                m.name()
            );
            k.push(run_kill(m, &base.join(format!("{}-kill", m.name())), t)?);
        }
        results.push((m, probe, r, k));
    }

    println!("### Modes\n");
    println!("| mode | crate | what a commit does |");
    println!("| --- | --- | --- |");
    for (m, _, _, _) in &results {
        println!("| {} | {} | {} |", m.name(), m.crate_name(), m.describe());
    }
    println!();
    println!("### Update throughput, disk use, recovery after a clean close\n");
    println!(
        "| mode | updates | updates/s | p50 µs | p99 µs | max µs | raw fdatasync p50 / p99 µs just before | disk while open MiB | after close MiB | after compaction MiB (took s) | open + read 10,000 (clean) ms | check |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for (m, probe, r, _) in &results {
        let c = &r.recovery_check;
        let check = if c.lost + c.missing + c.corrupt + c.ahead == 0 {
            "all current".to_string()
        } else {
            format!("{c:?}")
        };
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} / {:.0} | {:.1} ({:.1}) | {:.1} | {:.1} ({:.2}) | {:.1} | {} |",
            m.name(),
            r.updates,
            r.updates as f64 / r.secs,
            r.p50_us,
            r.p99_us,
            r.max_us,
            probe.0,
            probe.1,
            mib(r.disk_open.0),
            mib(r.disk_open.1),
            mib(r.disk_closed.0),
            mib(r.disk_compacted.0),
            r.compact_secs,
            r.recovery_ms,
            check
        );
    }
    println!();
    println!(
        "Disk: allocated MiB (apparent size in parentheses where it differs, e.g. preallocated journals). \
         The scene itself is {:.1} MiB of keys and values.",
        mib((KEYS * (VALUE_LEN + 36)) as u64)
    );
    println!();
    println!("### kill -9 of a writer mid-stream, then reopen\n");
    println!(
        "| mode | trials | killed by SIGKILL | updates acknowledged at kill | datablocks older than acknowledged (loss) | datablocks newer than acknowledged | corrupt or missing | disk at kill MiB | open + read 10,000 after kill ms |"
    );
    println!("| --- | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |");
    for (m, _, _, k) in &results {
        let list = |f: &dyn Fn(&KillRun) -> String| k.iter().map(f).collect::<Vec<_>>().join(", ");
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.name(),
            k.len(),
            k.iter().filter(|r| r.killed).count(),
            list(&|r| r.acked.to_string()),
            list(&|r| r.check.lost.to_string()),
            list(&|r| r.check.ahead.to_string()),
            list(&|r| (r.check.corrupt + r.check.missing).to_string()),
            list(&|r| format!("{:.0}", r.journal_mib)),
            list(&|r| format!("{:.0}", r.recovery_ms)),
        );
    }
    println!();
    println!("total time: {:.0} s", started.elapsed().as_secs_f64());
    let _ = fs::remove_dir_all(&base);
    Ok(())
}
