//! Writing a session file: checked first, then streamed to a temporary file
//! that replaces the target atomically.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    FORMAT_VERSION, FileError, FileSummary, MAGIC, MAX_STRING_BYTES, SaveInfo, check_block,
};
use crate::store::SessionImage;

/// zstd compression level of written files.
const ZSTD_LEVEL: i32 = 3;

/// Buffer size of file writes.
const IO_BUFFER: usize = 128 << 10;

/// Distinguishes temporary files of concurrent saves in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `image` to `path` atomically: to a temporary file in the same
/// directory, synced, then renamed over `path`, then the directory synced.
/// On error the temporary file is removed and `path` is untouched (unless
/// only the final sync of the directory failed).
///
/// Refuses, before writing anything, an image that
/// [`read_session`](super::read_session) would reject (invalid names,
/// revision 0, data that is not one MessagePack value, duplicate uuids).
pub fn write_session(
    path: &Path,
    image: &SessionImage,
    info: &SaveInfo,
) -> Result<FileSummary, FileError> {
    check_image(image, info).map_err(|reason| FileError::Unsavable {
        path: path.to_owned(),
        reason,
    })?;
    let io_error = |action: &'static str| {
        move |source: io::Error| FileError::Io {
            path: path.to_owned(),
            action,
            source,
        }
    };
    let (dir, temp) = temporary_path(path).map_err(io_error("save"))?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(io_error("create a temporary file for"))?;
    let written = write_file(&file, image, info)
        .map_err(io_error("write"))
        .and_then(|()| file.sync_all().map_err(io_error("sync")))
        .and_then(|()| file.metadata().map_err(io_error("write")));
    drop(file);
    let file_bytes = match written {
        Ok(metadata) => metadata.len(),
        Err(e) => {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
    };
    if let Err(e) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(io_error("replace")(e));
    }
    sync_dir(&dir).map_err(io_error("sync the directory of"))?;
    Ok(FileSummary {
        datablocks: image.blocks.len(),
        bytes: image.bytes(),
        file_bytes,
    })
}

/// The directory of `path` and a temporary file name in it.
pub(super) fn temporary_path(path: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = dir.join(temp);
    Ok((dir, temp))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Streams the whole file into `file`.
fn write_file(file: &File, image: &SessionImage, info: &SaveInfo) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(IO_BUFFER, file);
    out.write_all(&MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_be_bytes())?;
    out.write_all(&0u16.to_be_bytes())?;
    let mut encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
    encoder.include_checksum(true)?;
    write_records(&mut encoder, image, info)?;
    encoder.finish()?.flush()
}

/// Writes the header record, one record per datablock and the trailer.
fn write_records<W: Write>(w: &mut W, image: &SessionImage, info: &SaveInfo) -> io::Result<()> {
    use rmp::encode::{write_array_len, write_bin_len, write_bool, write_map_len, write_str};
    let count = u64::try_from(image.blocks.len()).unwrap_or(u64::MAX);
    let bytes = u64::try_from(image.bytes()).unwrap_or(u64::MAX);
    write_map_len(w, 5)?;
    write_str(w, "format")?;
    write_uint(w, FORMAT_VERSION.into())?;
    write_str(w, "server_version")?;
    write_str(w, &info.server_version)?;
    write_str(w, "saved_at")?;
    write_uint(w, info.saved_at_ms)?;
    write_str(w, "datablocks")?;
    write_uint(w, count)?;
    write_str(w, "bytes")?;
    write_uint(w, bytes)?;
    for b in &image.blocks {
        write_array_len(w, 6)?;
        write_str(w, &b.uuid)?;
        write_str(w, &b.type_id)?;
        write_str(w, &b.owner)?;
        write_array_len(w, u32_len(b.deps.len())?)?;
        for dep in &b.deps {
            write_str(w, dep)?;
        }
        write_uint(w, b.revision)?;
        write_bin_len(w, u32_len(b.data.len())?)?;
        w.write_all(&b.data)?;
    }
    write_map_len(w, 2)?;
    write_str(w, "end")?;
    write_bool(w, true)?;
    write_str(w, "datablocks")?;
    write_uint(w, count)
}

fn write_uint<W: Write>(w: &mut W, value: u64) -> io::Result<()> {
    rmp::encode::write_uint(w, value)?;
    Ok(())
}

fn u32_len(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too long"))
}

/// Refuses what the reader would reject.
fn check_image(image: &SessionImage, info: &SaveInfo) -> Result<(), String> {
    if info.server_version.len() > MAX_STRING_BYTES {
        return Err(format!(
            "the server version is {} bytes long; the limit is {MAX_STRING_BYTES}",
            info.server_version.len()
        ));
    }
    let mut seen: HashSet<&str> = HashSet::with_capacity(image.blocks.len());
    for b in &image.blocks {
        check_block(b).map_err(|reason| format!("datablock {:?} is invalid: {reason}", b.uuid))?;
        if u32::try_from(b.data.len()).is_err() {
            return Err(format!(
                "datablock {:?} holds {} bytes of data; a session file holds at most {} per \
                 datablock",
                b.uuid,
                b.data.len(),
                u32::MAX
            ));
        }
        if !seen.insert(&b.uuid) {
            return Err(format!("two datablocks have uuid {:?}", b.uuid));
        }
    }
    Ok(())
}
