//! The wire format of protocol v1 (see docs/protocol.md).

pub mod patch;
