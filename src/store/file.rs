//! Session files: portable, compressed backups of a session.
