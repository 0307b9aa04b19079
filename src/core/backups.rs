//! Saving session files off the core's thread: `save` from the console and
//! autosave, with rotation of autosaved files.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::SavedFile;
use crate::store::SessionImage;
use crate::store::file::{SaveInfo, write_session};

/// Autosaved files are named `autosave-<time>.rsession`; only they are
/// rotated, never files saved by hand.
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

/// Writes `image` to `path` on a blocking thread, then rotates autosaves in
/// `rotate.0` down to `rotate.1` files, and calls `done` with the outcome.
pub fn save_in_background(
    image: SessionImage,
    path: PathBuf,
    rotate: Option<(PathBuf, usize)>,
    done: impl FnOnce(Result<SavedFile, String>) + Send + 'static,
) {
    tokio::task::spawn_blocking(move || {
        let result = save(&image, &path);
        if let (Ok(_), Some((dir, keep))) = (&result, rotate) {
            rotate_autosaves(&dir, keep);
        }
        done(result);
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

/// Deletes the oldest autosaved files in `dir` beyond the newest `keep`.
pub fn rotate_autosaves(dir: &Path, keep: usize) {
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
        .filter(|path| is_autosave(path))
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

fn is_autosave(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == EXTENSION)
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{AUTOSAVE_PREFIX}-")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_time_and_rotation_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let name = new_path(dir.path(), AUTOSAVE_PREFIX);
        let text = name.file_name().unwrap().to_str().unwrap();
        assert!(text.starts_with("autosave-2"), "{text}");
        assert!(text.ends_with(".rsession"), "{text}");
        assert!(!text.contains(':'), "{text}");
        for stamp in [
            "20260101T000000-000Z",
            "20260101T000001-000Z",
            "20260102T000000-000Z",
        ] {
            std::fs::write(dir.path().join(format!("autosave-{stamp}.rsession")), b"x").unwrap();
        }
        std::fs::write(
            dir.path().join("session-20250101T000000-000Z.rsession"),
            b"x",
        )
        .unwrap();
        std::fs::write(dir.path().join("autosave-notes.txt"), b"x").unwrap();
        rotate_autosaves(dir.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "autosave-20260101T000001-000Z.rsession",
                "autosave-20260102T000000-000Z.rsession",
                "autosave-notes.txt",
                "session-20250101T000000-000Z.rsession",
            ]
        );
    }
}
