//! Saving session files off the core's thread: `save` from the console and
//! autosave, with rotation of autosaved files. A room's files carry its
//! directory name ([`super::rooms::dir_name`]): `autosave-default-<time>`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::SavedFile;
use super::rooms::dir_name;
use crate::store::SessionImage;
use crate::store::file::{SaveInfo, write_session};

/// Autosaved files are named `autosave-<room>-<time>.rsession`; only they
/// are rotated (per room), never files saved by hand.
pub const AUTOSAVE_PREFIX: &str = "autosave";
/// The extension of session files.
pub const EXTENSION: &str = "rsession";

/// A new file name in `dir`: `<prefix>-<UTC time to the millisecond>.rsession`,
/// which sorts by time.
pub fn new_path(dir: &Path, prefix: &str) -> PathBuf {
    let stamp = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let compact: String = stamp
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .map(|c| if c == '.' { '-' } else { c })
        .collect();
    dir.join(format!("{prefix}-{compact}.{EXTENSION}"))
}

/// Where a session file goes: a file the admin named, whose folder must
/// exist (a typing mistake must not create folders), or a new file in the
/// backup directory, which is created when missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Named(PathBuf),
    InBackups(PathBuf),
}

/// Writes `image` to `target` on a blocking thread and calls `done` with
/// the outcome.
pub fn save_in_background(
    image: SessionImage,
    target: Target,
    done: impl FnOnce(Result<SavedFile, String>) + Send + 'static,
) {
    tokio::task::spawn_blocking(move || done(save_to(&image, &target)));
}

/// Writes `image` to `target` on this thread.
pub fn save_to(image: &SessionImage, target: &Target) -> Result<SavedFile, String> {
    match target {
        Target::InBackups(path) => save(image, path),
        Target::Named(path) => {
            let folder = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !folder.is_dir() {
                return Err(format!(
                    "the folder {} does not exist; create it first, or give a FILE in an existing folder",
                    folder.display()
                ));
            }
            let summary =
                write_session(path, image, &SaveInfo::now()).map_err(|e| e.to_string())?;
            Ok(SavedFile {
                path: path.to_owned(),
                summary,
            })
        }
    }
}

/// Autosaves rooms one after the other on a blocking thread, rotating each
/// room's autosaves down to `keep`; then calls `done`.
pub fn autosave_in_background(
    images: Vec<(String, SessionImage)>,
    dir: PathBuf,
    keep: usize,
    done: impl FnOnce() + Send + 'static,
) {
    tokio::task::spawn_blocking(move || {
        for (room, image) in images {
            let prefix = format!("{AUTOSAVE_PREFIX}-{}", dir_name(&room));
            let path = new_path(&dir, &prefix);
            match save(&image, &path) {
                Ok(saved) => {
                    rotate(&dir, &prefix, keep);
                    tracing::info!(
                        room,
                        file = %saved.path.display(),
                        datablocks = saved.summary.datablocks,
                        "autosaved the session"
                    );
                }
                Err(e) => tracing::error!(room, "autosave failed: {e}"),
            }
        }
        done();
    });
}

fn save(image: &SessionImage, path: &Path) -> Result<SavedFile, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
    }
    let summary = write_session(path, image, &SaveInfo::now()).map_err(|e| e.to_string())?;
    Ok(SavedFile {
        path: path.to_owned(),
        summary,
    })
}

/// Deletes the oldest files in `dir` named `<prefix>-<time>.rsession`
/// beyond the newest `keep`.
pub fn rotate(dir: &Path, prefix: &str, keep: usize) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot list autosaves to rotate them: {e}");
            return;
        }
    };
    let mut autosaves: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| is_rotated(path, prefix))
        .collect();
    autosaves.sort();
    let excess = autosaves.len().saturating_sub(keep);
    for old in autosaves.into_iter().take(excess) {
        match std::fs::remove_file(&old) {
            Ok(()) => tracing::debug!(file = %old.display(), "removed an old autosave"),
            Err(e) => tracing::warn!(file = %old.display(), "cannot remove an old autosave: {e}"),
        }
    }
}

/// Whether `path` is `<prefix>-<time>.rsession`: the time starts with a
/// digit, and a room's directory name never holds `-`, so one room's
/// prefix never matches another's files.
fn is_rotated(path: &Path, prefix: &str) -> bool {
    path.extension().is_some_and(|e| e == EXTENSION)
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|time| time.starts_with(|c: char| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_time_and_rotation_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let name = new_path(dir.path(), "autosave-default");
        let text = name.file_name().unwrap().to_str().unwrap();
        assert!(text.starts_with("autosave-default-2"), "{text}");
        assert!(text.ends_with(".rsession"), "{text}");
        assert!(!text.contains(':'), "{text}");
        for stamp in [
            "20260101T000000-000Z",
            "20260101T000001-000Z",
            "20260102T000000-000Z",
        ] {
            std::fs::write(
                dir.path().join(format!("autosave-a-{stamp}.rsession")),
                b"x",
            )
            .unwrap();
        }
        // Another room's autosave, a file saved by hand, and a stranger.
        for other in [
            "autosave-a%2Db-20200101T000000-000Z.rsession",
            "session-a-20250101T000000-000Z.rsession",
            "autosave-a-notes.txt",
        ] {
            std::fs::write(dir.path().join(other), b"x").unwrap();
        }
        rotate(dir.path(), "autosave-a", 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "autosave-a%2Db-20200101T000000-000Z.rsession",
                "autosave-a-20260101T000001-000Z.rsession",
                "autosave-a-20260102T000000-000Z.rsession",
                "autosave-a-notes.txt",
                "session-a-20250101T000000-000Z.rsession",
            ]
        );
    }
}
