//! The data directory: a SQLite database recording the session.
