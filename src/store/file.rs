//! Session files: portable, compressed backups of a session.
//! (Placeholder until the format lands.)

use std::path::Path;

use super::SessionImage;

#[derive(Debug, Clone)]
pub struct SaveInfo {
    pub server_version: String,
    pub saved_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileSummary {
    pub datablocks: usize,
    pub bytes: usize,
    pub file_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionFileHeader {
    pub format: u64,
    pub server_version: String,
    pub saved_at_ms: u64,
    pub datablocks: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FileError(String);

pub fn write_session(
    _path: &Path,
    _image: &SessionImage,
    _info: &SaveInfo,
) -> Result<FileSummary, FileError> {
    Err(FileError("not yet".into()))
}

pub fn read_session(
    _path: &Path,
    _max_datablock_bytes: usize,
) -> Result<(SessionImage, SessionFileHeader), FileError> {
    Err(FileError("not yet".into()))
}
