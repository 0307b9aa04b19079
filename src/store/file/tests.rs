//! Session files: round trips, atomic writes, and every kind of damage.

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use rmpv::Value;
use tempfile::TempDir;

use super::*;

/// `max_datablock_bytes` of most reads.
const LIMIT: usize = 64 << 20;

fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).expect("encode");
    out
}

fn block(uuid: &str, type_id: &str, owner: &str, deps: &[&str], data: &Value) -> StoredBlock {
    StoredBlock {
        uuid: uuid.to_owned(),
        type_id: type_id.to_owned(),
        owner: owner.to_owned(),
        deps: deps.iter().map(|d| (*d).to_owned()).collect(),
        revision: 1,
        data: Bytes::from(encode(data)),
    }
}

/// Deterministic bytes that do not compress.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn info() -> SaveInfo {
    SaveInfo {
        server_version: "1.2.3-test".to_owned(),
        saved_at_ms: 1_700_000_000_123,
    }
}

fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(
        entries
            .iter()
            .map(|(k, v)| (Value::from(*k), v.clone()))
            .collect(),
    )
}

/// Several datablocks: no deps, many deps, 3 MiB of data, unicode names.
fn sample_image() -> SessionImage {
    let many: Vec<String> = (0..300).map(|i| format!("dep-{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let mut blocks = vec![
        block(
            "scene",
            "Scene",
            "COMMON",
            &[],
            &map(&[("name", "Scene".into()), ("frame", 12.into())]),
        ),
        block(
            "objet-été-🚀",
            "Object",
            "Zoé",
            &["scene"],
            &map(&[(
                "location",
                vec![Value::from(1.5), 2.into(), 3.into()].into(),
            )]),
        ),
        block("many", "Collection", "alice", &many, &Value::Nil),
        block(
            "mesh",
            "Mesh",
            "bob",
            &["scene", "many"],
            &Value::Binary(noise(3 << 20, 7)),
        ),
    ];
    blocks[2].revision = 42;
    blocks[3].revision = u64::MAX;
    SessionImage { blocks }
}

fn small_image() -> SessionImage {
    SessionImage {
        blocks: vec![
            block("a", "Scene", "COMMON", &[], &Value::from("a")),
            block(
                "b",
                "Object",
                "alice",
                &["a"],
                &Value::from(vec![Value::from(1)]),
            ),
        ],
    }
}

fn write_temp(image: &SessionImage) -> (TempDir, PathBuf, FileSummary) {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("session.rsession");
    let summary = write_session(&path, image, &info()).expect("write");
    (dir, path, summary)
}

fn write_bytes(bytes: &[u8]) -> (TempDir, PathBuf) {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("damaged.rsession");
    fs::write(&path, bytes).expect("write");
    (dir, path)
}

fn read_bytes(
    bytes: &[u8],
) -> (
    PathBuf,
    Result<(SessionImage, SessionFileHeader), FileError>,
) {
    let (_dir, path) = write_bytes(bytes);
    let result = read_session(&path, LIMIT);
    (path, result)
}

/// Reads `bytes` as a file and returns the error, checking that its message
/// names the file and contains every one of `words`.
fn read_error(bytes: &[u8], words: &[&str]) -> FileError {
    let (path, result) = read_bytes(bytes);
    let err = result.expect_err("reading should fail");
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "{message:?} does not name {}",
        path.display()
    );
    for word in words {
        assert!(
            message.contains(word),
            "{message:?} does not contain {word:?}"
        );
    }
    err
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A 12-byte header with the given version and flags.
fn header_bytes(version: u16, flags: u16) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out
}

/// A zstd frame with a content checksum.
fn compress(body: &[u8]) -> Vec<u8> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
    encoder.include_checksum(true).expect("checksum");
    encoder.write_all(body).expect("compress");
    encoder.finish().expect("finish")
}

/// A file holding `values` as its records.
fn file_of(values: &[Value]) -> Vec<u8> {
    let body: Vec<u8> = values.iter().flat_map(encode).collect();
    let mut out = header_bytes(FORMAT_VERSION, 0);
    out.extend(compress(&body));
    out
}

fn header_record(datablocks: u64, bytes: u64) -> Value {
    map(&[
        ("format", 1.into()),
        ("server_version", "9.9.9".into()),
        ("saved_at", 5.into()),
        ("datablocks", datablocks.into()),
        ("bytes", bytes.into()),
    ])
}

fn trailer_record(datablocks: u64) -> Value {
    map(&[("end", true.into()), ("datablocks", datablocks.into())])
}

/// A datablock record whose data is `data` (stored as is).
fn block_record(uuid: &str, revision: Value, data: &[u8]) -> Value {
    Value::Array(vec![
        uuid.into(),
        "Object".into(),
        "COMMON".into(),
        Value::Array(vec![]),
        revision,
        Value::Binary(data.to_vec()),
    ])
}

const DATA: &[u8] = &[0x92, 0x01, 0x02]; // [1, 2]

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

#[test]
fn round_trip_preserves_everything() {
    let image = sample_image();
    let (_dir, path, summary) = write_temp(&image);
    assert_eq!(
        summary,
        FileSummary {
            datablocks: 4,
            bytes: image.bytes(),
            file_bytes: fs::metadata(&path).expect("metadata").len(),
        }
    );
    let (read, header) = read_session(&path, LIMIT).expect("read");
    assert_eq!(read, image);
    assert_eq!(
        header,
        SessionFileHeader {
            format: FORMAT_VERSION,
            server_version: "1.2.3-test".to_owned(),
            saved_at_ms: 1_700_000_000_123,
            datablocks: 4,
            bytes: u64::try_from(image.bytes()).expect("bytes"),
        }
    );
    let bytes = fs::read(&path).expect("read");
    assert_eq!(&bytes[..12], b"RSESSION\x00\x01\x00\x00");
    assert_eq!(&bytes[12..16], &ZSTD_MAGIC);
}

#[test]
fn empty_image_round_trips() {
    let image = SessionImage::default();
    let (_dir, path, summary) = write_temp(&image);
    assert_eq!(summary.datablocks, 0);
    assert_eq!(summary.bytes, 0);
    let (read, header) = read_session(&path, LIMIT).expect("read");
    assert_eq!(read, image);
    assert_eq!(header.datablocks, 0);
    assert_eq!(header.bytes, 0);
}

#[test]
fn data_exactly_at_the_limit_is_read() {
    let image = small_image();
    let (_dir, path, _) = write_temp(&image);
    let largest = image
        .blocks
        .iter()
        .map(|b| b.data.len())
        .max()
        .expect("blocks");
    let (read, _) = read_session(&path, largest).expect("read");
    assert_eq!(read, image);
}

#[test]
fn unknown_keys_are_ignored() {
    let mut header = header_record(1, 3);
    let mut trailer = trailer_record(1);
    let extra = Value::Map(vec![(
        "nested".into(),
        Value::Array(vec![
            Value::Binary(vec![1; 300]),
            Value::Ext(5, vec![0; 20]),
            Value::F64(1.5),
            Value::from(-7),
            Value::Nil,
        ]),
    )]);
    for record in [&mut header, &mut trailer] {
        if let Value::Map(entries) = record {
            entries.insert(0, ("future".into(), extra.clone()));
            entries.push(("k".repeat(200).into(), "long unknown key".into()));
        }
    }
    let bytes = file_of(&[header, block_record("a", 3.into(), DATA), trailer]);
    let (_, result) = read_bytes(&bytes);
    let (image, header) = result.expect("read");
    assert_eq!(header.server_version, "9.9.9");
    assert_eq!(image.blocks.len(), 1);
    assert_eq!(image.blocks[0].revision, 3);
    assert_eq!(&image.blocks[0].data[..], DATA);
}

#[test]
fn save_info_now_names_this_server() {
    let now = SaveInfo::now();
    assert_eq!(now.server_version, env!("CARGO_PKG_VERSION"));
    assert!(now.saved_at_ms > 1_600_000_000_000);
}

// ---------------------------------------------------------------------------
// Atomic writes
// ---------------------------------------------------------------------------

#[test]
fn writing_over_a_file_replaces_it() {
    let (dir, path, _) = write_temp(&sample_image());
    let small = small_image();
    let summary = write_session(&path, &small, &info()).expect("overwrite");
    assert_eq!(summary.datablocks, 2);
    let (read, _) = read_session(&path, LIMIT).expect("read");
    assert_eq!(read, small);
    assert_eq!(files_in(dir.path()), ["session.rsession"]);
}

#[test]
fn a_relative_path_without_directory_is_written() {
    // `Path::parent` of a bare name is empty: the directory is ".".
    let (dir, path) = temporary_path(Path::new("plain.rsession")).expect("paths");
    assert_eq!(dir, Path::new("."));
    assert!(path.starts_with("."));
    let name = path.file_name().expect("name").to_string_lossy();
    assert!(name.starts_with(".plain.rsession.tmp-"), "{name}");
}

#[test]
fn a_failed_write_leaves_no_temporary_file() {
    let dir = TempDir::new().expect("tempdir");
    // Into a directory that does not exist.
    let path = dir.path().join("missing").join("session.rsession");
    let err = write_session(&path, &small_image(), &info()).expect_err("must fail");
    assert!(matches!(err, FileError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(files_in(dir.path()).is_empty());

    // Over a directory: the temporary file is written, the rename fails.
    let target = dir.path().join("taken");
    fs::create_dir(&target).expect("mkdir");
    fs::write(target.join("inside"), b"x").expect("write");
    let err = write_session(&target, &small_image(), &info()).expect_err("must fail");
    assert!(
        matches!(
            err,
            FileError::Io {
                action: "replace",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&target.display().to_string()),
        "{err}"
    );
    assert_eq!(files_in(dir.path()), ["taken"]);
}

#[test]
fn invalid_images_are_not_written() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("session.rsession");
    let mut zero = small_image();
    zero.blocks[1].revision = 0;
    let mut duplicate = small_image();
    duplicate.blocks[1].uuid = "a".to_owned();
    let mut bad_data = small_image();
    bad_data.blocks[0].data = Bytes::from_static(&[0x92, 0x01]);
    let mut bad_name = small_image();
    bad_name.blocks[0].owner = String::new();
    for (image, words) in [
        (zero, ["\"b\"", "revision is 0"]),
        (duplicate, ["\"a\"", "two datablocks"]),
        (bad_data, ["\"a\"", "MessagePack"]),
        (bad_name, ["\"a\"", "owner must not be empty"]),
    ] {
        let err = write_session(&path, &image, &info()).expect_err("must fail");
        assert!(matches!(err, FileError::Unsavable { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        for word in words {
            assert!(message.contains(word), "{message:?} lacks {word:?}");
        }
        assert!(files_in(dir.path()).is_empty());
    }
}

// ---------------------------------------------------------------------------
// The 12-byte header
// ---------------------------------------------------------------------------

fn valid_file() -> Vec<u8> {
    let (_dir, path, _) = write_temp(&small_image());
    fs::read(path).expect("read")
}

#[test]
fn wrong_magic_is_not_a_session_file() {
    let mut bytes = valid_file();
    bytes[..8].copy_from_slice(b"SQLite f");
    let err = read_error(&bytes, &["not a session file", "SQLite f"]);
    assert!(matches!(err, FileError::NotSessionFile { .. }), "{err:?}");
    // Shorter than the magic, and not a prefix of it.
    let err = read_error(b"{\"a\"", &["not a session file"]);
    assert!(matches!(err, FileError::NotSessionFile { .. }), "{err:?}");
}

#[test]
fn a_future_version_is_refused() {
    let mut bytes = valid_file();
    bytes[8..10].copy_from_slice(&2u16.to_be_bytes());
    let err = read_error(&bytes, &["version 2", "only version 1", "byte offset 8"]);
    assert!(
        matches!(
            err,
            FileError::NewerVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    bytes[8..10].copy_from_slice(&0u16.to_be_bytes());
    let err = read_error(&bytes, &["version (byte offset 8) is 0"]);
    assert!(matches!(err, FileError::NotSessionFile { .. }), "{err:?}");
}

#[test]
fn unknown_flags_are_refused() {
    let mut bytes = valid_file();
    bytes[10..12].copy_from_slice(&0x0100u16.to_be_bytes());
    let err = read_error(&bytes, &["0x0100", "byte offset 10"]);
    assert!(
        matches!(err, FileError::UnknownFlags { flags: 0x0100, .. }),
        "{err:?}"
    );
}

#[test]
fn a_missing_file_is_an_io_error() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("nope.rsession");
    let err = read_session(&path, LIMIT).expect_err("must fail");
    assert!(
        matches!(err, FileError::Io { action: "open", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));
}

// ---------------------------------------------------------------------------
// Truncation and damage of the compressed data
// ---------------------------------------------------------------------------

#[test]
fn truncation_inside_the_header() {
    let bytes = valid_file();
    for len in [0, 3, 8, 11] {
        let err = read_error(&bytes[..len], &["truncated", "12-byte header"]);
        assert!(
            matches!(err, FileError::TruncatedHeader { len: l, .. } if l == len),
            "{len}: {err:?}"
        );
    }
}

#[test]
fn truncation_inside_the_compressed_data() {
    let image = sample_image();
    let (_dir, path, _) = write_temp(&image);
    let bytes = fs::read(path).expect("read");
    let n = bytes.len();
    for len in [12, 14, 17, 40, n / 3, n / 2, n - 5, n - 1] {
        let err = read_error(&bytes[..len], &["ends too early", "byte offset"]);
        let FileError::Truncated {
            offset,
            read,
            announced,
            ..
        } = err
        else {
            panic!("{len}: {err:?}");
        };
        assert!(offset <= len as u64, "{len}: offset {offset}");
        assert!(read <= 4);
        if len >= n / 2 {
            assert_eq!(announced, Some(4), "{len}");
        }
        if len == n - 1 {
            // Only the end of the checksum is missing: every record was read.
            assert_eq!(read, 4);
        }
    }
}

#[test]
fn a_flipped_byte_in_the_compressed_data_is_detected() {
    let image = sample_image();
    let (_dir, path, _) = write_temp(&image);
    let good = fs::read(path).expect("read");
    let at = good.len() / 2;
    let mut bytes = good.clone();
    bytes[at] ^= 0x20;
    let err = read_error(&bytes, &["damaged", "compressed data", "near byte offset"]);
    let FileError::Compressed { offset, .. } = err else {
        panic!("{err:?}");
    };
    assert!(
        offset > HEADER_BYTES && offset <= good.len() as u64,
        "{offset}"
    );

    // The checksum itself.
    let mut bytes = good.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let err = read_error(&bytes, &["checksum"]);
    assert!(matches!(err, FileError::Compressed { .. }), "{err:?}");
}

#[test]
fn a_frame_without_checksum_is_refused() {
    let body: Vec<u8> = [header_record(0, 0), trailer_record(0)]
        .iter()
        .flat_map(encode)
        .collect();
    let mut bytes = header_bytes(1, 0);
    bytes.extend(zstd::stream::encode_all(&body[..], 3).expect("compress"));
    let err = read_error(&bytes, &["no content checksum", "byte offset 16"]);
    assert!(matches!(err, FileError::Compressed { .. }), "{err:?}");

    // A written file whose checksum flag was cleared: without the check, its
    // checksum would pass for trailing bytes, which could be cut off too.
    let mut bytes = valid_file();
    bytes[16] &= !ZSTD_CHECKSUM_FLAG;
    let err = read_error(&bytes, &["no content checksum"]);
    assert!(matches!(err, FileError::Compressed { .. }), "{err:?}");

    let mut bytes = header_bytes(1, 0);
    bytes.extend(&body);
    let err = read_error(&bytes, &["not start with a zstd frame", "byte offset 12"]);
    assert!(matches!(err, FileError::Compressed { .. }), "{err:?}");
}

#[test]
fn bytes_after_the_frame_are_refused() {
    let good = valid_file();
    let mut bytes = good.clone();
    bytes.extend_from_slice(b"garbage");
    let err = read_error(
        &bytes,
        &["7 unexpected bytes", &format!("byte offset {}", good.len())],
    );
    assert!(
        matches!(err, FileError::TrailingBytes { offset, extra: 7, .. } if offset == good.len() as u64),
        "{err:?}"
    );
    // A second, valid frame.
    let mut bytes = good.clone();
    bytes.extend(compress(b"\xc0"));
    let err = read_error(&bytes, &["unexpected bytes"]);
    assert!(matches!(err, FileError::TrailingBytes { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------
// Malformed and invalid records (in intact frames)
// ---------------------------------------------------------------------------

#[test]
fn a_record_of_the_wrong_shape_is_malformed() {
    let mut short = block_record("a", 1.into(), DATA);
    if let Value::Array(items) = &mut short {
        items.pop();
    }
    let bytes = file_of(&[header_record(1, 3), short, trailer_record(1)]);
    let err = read_error(
        &bytes,
        &[
            "datablock 1 of 1",
            "uncompressed offset",
            "array of 5 items",
        ],
    );
    let FileError::Malformed { record, offset, .. } = err else {
        panic!("{err:?}");
    };
    assert_eq!(
        record,
        Record::Datablock {
            index: 1,
            announced: 1
        }
    );
    assert_eq!(offset, encode(&header_record(1, 3)).len() as u64);

    // A string where the data should be.
    let mut wrong = block_record("a", 1.into(), DATA);
    if let Value::Array(items) = &mut wrong {
        items[5] = "text".into();
    }
    let bytes = file_of(&[header_record(1, 3), wrong, trailer_record(1)]);
    let err = read_error(&bytes, &["its data is a string"]);
    assert!(matches!(err, FileError::Malformed { .. }), "{err:?}");

    // Neither an array nor a map.
    let bytes = file_of(&[header_record(1, 3), Value::from(7), trailer_record(1)]);
    let err = read_error(&bytes, &["datablock 1 of 1", "an integer"]);
    assert!(matches!(err, FileError::Malformed { .. }), "{err:?}");
}

#[test]
fn a_malformed_header_record_is_reported() {
    let no_saved_at = map(&[
        ("format", 1.into()),
        ("server_version", "x".into()),
        ("datablocks", 0.into()),
        ("bytes", 0.into()),
    ]);
    let bytes = file_of(&[no_saved_at, trailer_record(0)]);
    let err = read_error(&bytes, &["header record", "\"saved_at\" is missing"]);
    assert!(
        matches!(
            err,
            FileError::Malformed {
                record: Record::Header,
                offset: 0,
                ..
            }
        ),
        "{err:?}"
    );

    let mut twice = header_record(0, 0);
    if let Value::Map(entries) = &mut twice {
        entries.push(("bytes".into(), 0.into()));
    }
    let bytes = file_of(&[twice, trailer_record(0)]);
    let err = read_error(&bytes, &["\"bytes\" appears twice"]);
    assert!(matches!(err, FileError::Malformed { .. }), "{err:?}");

    let mut format2 = header_record(0, 0);
    if let Value::Map(entries) = &mut format2 {
        entries[0].1 = 2.into();
    }
    let bytes = file_of(&[format2, trailer_record(0)]);
    let err = read_error(&bytes, &["its format is 2"]);
    assert!(matches!(err, FileError::Malformed { .. }), "{err:?}");

    let bytes = file_of(&[Value::Array(vec![]), trailer_record(0)]);
    let err = read_error(&bytes, &["an array, not a map"]);
    assert!(matches!(err, FileError::Malformed { .. }), "{err:?}");
}

#[test]
fn revision_zero_or_negative_is_invalid() {
    for (revision, words) in [
        (Value::from(0), ["\"a\"", "revision is 0"]),
        (Value::from(-3), ["\"a\"", "revision is -3"]),
    ] {
        let bytes = file_of(&[
            header_record(1, 3),
            block_record("a", revision, DATA),
            trailer_record(1),
        ]);
        let err = read_error(&bytes, &words);
        assert!(
            matches!(err, FileError::InvalidBlock { ref uuid, .. } if uuid == "a"),
            "{err:?}"
        );
    }
}

#[test]
fn data_that_is_not_one_messagepack_value_is_invalid() {
    for data in [&[0x92, 0x01][..], &[0xc1], &[0x01, 0x02], &[]] {
        let size = data.len() as u64;
        let bytes = file_of(&[
            header_record(1, size),
            block_record("a", 1.into(), data),
            trailer_record(1),
        ]);
        let err = read_error(&bytes, &["datablock 1 of 1", "\"a\"", "MessagePack"]);
        assert!(matches!(err, FileError::InvalidBlock { .. }), "{err:?}");
    }
}

#[test]
fn invalid_names_are_refused() {
    let mut empty_owner = block_record("a", 1.into(), DATA);
    let mut control = block_record("b", 1.into(), DATA);
    let mut too_many_deps = block_record("c", 1.into(), DATA);
    let mut long_type = block_record("d", 1.into(), DATA);
    if let (Value::Array(a), Value::Array(b), Value::Array(c), Value::Array(d)) = (
        &mut empty_owner,
        &mut control,
        &mut too_many_deps,
        &mut long_type,
    ) {
        a[2] = "".into();
        b[3] = Value::Array(vec!["ok".into(), "bad\nname".into()]);
        c[3] = Value::Array(vec!["x".into(); MAX_DEPS + 1]);
        d[1] = "T".repeat(200).into();
    }
    let too_many = format!("{} dependencies", MAX_DEPS + 1);
    for (record, words) in [
        (empty_owner, ["\"a\"", "owner must not be empty"]),
        (control, ["\"b\"", "control characters"]),
        (too_many_deps, ["\"c\"", too_many.as_str()]),
        (long_type, ["\"d\"", "200 bytes long"]),
    ] {
        let bytes = file_of(&[header_record(1, 3), record, trailer_record(1)]);
        let err = read_error(&bytes, &words);
        assert!(matches!(err, FileError::InvalidBlock { .. }), "{err:?}");
    }
    // Longer than any string the reader allocates for.
    let bytes = file_of(&[
        header_record(1, 3),
        block_record(&"u".repeat(5000), 1.into(), DATA),
        trailer_record(1),
    ]);
    let err = read_error(&bytes, &["string of 5000 bytes"]);
    assert!(matches!(err, FileError::Malformed { .. }), "{err:?}");
}

#[test]
fn a_duplicate_uuid_is_refused() {
    let bytes = file_of(&[
        header_record(3, 9),
        block_record("a", 1.into(), DATA),
        block_record("b", 1.into(), DATA),
        block_record("a", 2.into(), DATA),
        trailer_record(3),
    ]);
    let err = read_error(&bytes, &["datablock 3 of 3", "\"a\"", "like datablock 1"]);
    assert!(
        matches!(
            err,
            FileError::DuplicateUuid {
                first: 1,
                record: Record::Datablock { index: 3, .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_missing_trailer_is_truncation() {
    let bytes = file_of(&[
        header_record(3, 9),
        block_record("a", 1.into(), DATA),
        block_record("b", 1.into(), DATA),
    ]);
    let err = read_error(&bytes, &["ends too early", "after 2 of the 3 datablocks"]);
    assert!(
        matches!(
            err,
            FileError::Truncated {
                read: 2,
                announced: Some(3),
                ..
            }
        ),
        "{err:?}"
    );
    // Cut in the middle of a record.
    let mut body: Vec<u8> = [header_record(1, 3), block_record("a", 1.into(), DATA)]
        .iter()
        .flat_map(encode)
        .collect();
    body.truncate(body.len() - 2);
    let mut bytes = header_bytes(1, 0);
    bytes.extend(compress(&body));
    let err = read_error(&bytes, &["ends too early", "after 0 of the 1"]);
    assert!(
        matches!(err, FileError::Truncated { read: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn counts_that_disagree_are_refused() {
    let blocks = [
        block_record("a", 1.into(), DATA),
        block_record("b", 1.into(), DATA),
    ];
    for (header, trailer, words) in [
        (3, 3, ["announces 3 datablocks", "holds 2"]),
        (2, 5, ["its trailer 5", "holds 2"]),
        (u64::MAX, 2, ["announces 18446744073709551615", "holds 2"]),
    ] {
        let mut values = vec![header_record(header, 6)];
        values.extend(blocks.iter().cloned());
        values.push(trailer_record(trailer));
        let err = read_error(&file_of(&values), &words);
        assert!(matches!(err, FileError::CountMismatch { .. }), "{err:?}");
    }
    let mut values = vec![header_record(2, 7)];
    values.extend(blocks.iter().cloned());
    values.push(trailer_record(2));
    let err = read_error(&file_of(&values), &["7 bytes of data", "hold 6"]);
    assert!(matches!(err, FileError::CountMismatch { .. }), "{err:?}");
}

#[test]
fn the_trailer_must_end_the_data() {
    let end_false = map(&[("end", false.into()), ("datablocks", 0.into())]);
    let err = read_error(
        &file_of(&[header_record(0, 0), end_false]),
        &["trailer record", "\"end\" is false"],
    );
    assert!(
        matches!(
            err,
            FileError::Malformed {
                record: Record::Trailer,
                ..
            }
        ),
        "{err:?}"
    );
    let err = read_error(
        &file_of(&[header_record(0, 0), trailer_record(0), Value::Nil]),
        &["trailer record", "more data follows it"],
    );
    assert!(matches!(err, FileError::Malformed { .. }), "{err:?}");
}

#[test]
fn data_over_the_limit_is_refused_before_reading_it() {
    let data = encode(&Value::Binary(vec![0; 1000]));
    let size = data.len();
    let bytes = file_of(&[
        header_record(1, size as u64),
        block_record("big", 1.into(), &data),
        trailer_record(1),
    ]);
    let (path, result) = {
        let (_dir, path) = write_bytes(&bytes);
        let result = read_session(&path, size - 1);
        (path, result)
    };
    let err = result.expect_err("must fail");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()));
    assert!(message.contains("max_datablock_bytes"), "{message}");
    assert!(message.contains("\"big\""), "{message}");
    assert!(
        matches!(err, FileError::BlockTooLarge { size: s, limit, .. } if s == size as u64 && limit == size - 1),
        "{err:?}"
    );
}

#[test]
fn huge_announced_lengths_allocate_nothing() {
    // A bin32 of 4 GiB - 1 with 3 bytes behind it, under a limit it fits.
    let mut body = encode(&header_record(1, 3));
    body.extend([0x96, 0xa1, b'a', 0xa1, b'T', 0xa1, b'o', 0x90, 0x01]);
    body.extend([0xc6, 0xff, 0xff, 0xff, 0xff, 0x92, 0x01, 0x02]);
    let mut bytes = header_bytes(1, 0);
    bytes.extend(compress(&body));
    let (_dir, path) = write_bytes(&bytes);
    let err = read_session(&path, usize::MAX).expect_err("must fail");
    assert!(matches!(err, FileError::Truncated { .. }), "{err:?}");

    // A map32 header of 4 billion entries, and an array32 of dependencies.
    let mut body = vec![0xdf, 0xff, 0xff, 0xff, 0xff];
    body.extend(encode(&Value::from("format")));
    body.push(0x01);
    let mut bytes = header_bytes(1, 0);
    bytes.extend(compress(&body));
    let err = read_error(&bytes, &["ends too early"]);
    assert!(
        matches!(
            err,
            FileError::Truncated {
                announced: None,
                ..
            }
        ),
        "{err:?}"
    );

    let mut body = encode(&header_record(1, 3));
    body.extend([
        0x96, 0xa1, b'a', 0xa1, b'T', 0xa1, b'o', 0xdd, 0xff, 0xff, 0xff, 0xff,
    ]);
    let mut bytes = header_bytes(1, 0);
    bytes.extend(compress(&body));
    let err = read_error(&bytes, &["4294967295 dependencies"]);
    assert!(matches!(err, FileError::InvalidBlock { .. }), "{err:?}");

    // An unknown key whose value nests deeper than allowed.
    let mut body = vec![0x81, 0xa1, b'x'];
    body.extend(std::iter::repeat_n(0x91, MAX_DEPTH + 5));
    body.push(0xc0);
    let mut bytes = header_bytes(1, 0);
    bytes.extend(compress(&body));
    let err = read_error(&bytes, &["header record", "nested more than"]);
    assert!(matches!(err, FileError::Malformed { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------
// Random damage
// ---------------------------------------------------------------------------

/// A valid file of a few datablocks, compressible and not, and its contents.
fn fuzz_original() -> &'static (Vec<u8>, SessionImage, SessionFileHeader) {
    static ORIGINAL: OnceLock<(Vec<u8>, SessionImage, SessionFileHeader)> = OnceLock::new();
    ORIGINAL.get_or_init(|| {
        let mut image = small_image();
        image.blocks.push(block(
            "noise",
            "Image",
            "carol",
            &["a", "b"],
            &Value::Binary(noise(3000, 3)),
        ));
        image.blocks.push(block(
            "text",
            "Text",
            "COMMON",
            &[],
            &Value::from("lorem ipsum dolor sit amet ".repeat(80)),
        ));
        let (_dir, path, _) = write_temp(&image);
        let bytes = fs::read(&path).expect("read");
        let (read, header) = read_session(&path, LIMIT).expect("read");
        assert_eq!(read, image);
        (bytes, image, header)
    })
}

#[derive(Debug, Clone)]
enum Damage {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Append(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Damage::Flip(i, x)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Set(i, b)),
        2 => any::<Index>().prop_map(Damage::Truncate),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Damage::Insert(i, v)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Damage::Delete(i, n)),
        1 => proptest::collection::vec(any::<u8>(), 1..8).prop_map(Damage::Append),
    ]
}

fn apply(bytes: &mut Vec<u8>, damage: &Damage) {
    let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
    match damage {
        Damage::Flip(i, x) => {
            let k = at(i, bytes.len());
            if let Some(b) = bytes.get_mut(k) {
                *b ^= x;
            }
        }
        Damage::Set(i, v) => {
            let k = at(i, bytes.len());
            if let Some(b) = bytes.get_mut(k) {
                *b = *v;
            }
        }
        Damage::Truncate(i) => {
            let k = at(i, bytes.len());
            bytes.truncate(k);
        }
        Damage::Insert(i, v) => {
            let k = at(i, bytes.len() + 1);
            bytes.splice(k..k, v.iter().copied());
        }
        Damage::Delete(i, n) => {
            let k = at(i, bytes.len());
            let end = (k + n).min(bytes.len());
            bytes.drain(k..end);
        }
        Damage::Append(v) => bytes.extend_from_slice(v),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Damage never panics and never reads as a different session: the
    /// result is an error, or exactly the original.
    #[test]
    fn damage_is_detected_or_harmless(damages in proptest::collection::vec(damage(), 1..4)) {
        let (original, image, header) = fuzz_original();
        let mut bytes = original.clone();
        for d in &damages {
            apply(&mut bytes, d);
        }
        let (path, result) = read_bytes(&bytes);
        match result {
            Ok((read, read_header)) => {
                prop_assert_eq!(&read, image);
                prop_assert_eq!(&read_header, header);
            }
            Err(err) => {
                let message = err.to_string();
                prop_assert!(message.contains(&path.display().to_string()), "{}", message);
            }
        }
    }
}
