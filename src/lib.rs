//! replication-serve: a dedicated replication server for collaborative Blender
//! sessions.
//!
//! Map of the modules:
//!
//! - [`config`]: the configuration struct, its defaults and validation.
//! - [`cli`]: the command line (including the single-dash `-pwd` style flags).
//! - [`logging`]: log output to stderr and a file, without garbling the console.
//! - [`protocol`]: the wire format: messages, protocol version, size limits,
//!   the MessagePack codec and datablock patches. The only module that calls
//!   rmp-serde.
//! - [`room`]: one session's state (datablocks, owners, users) and the rules
//!   that change it. Pure logic, no I/O.
//! - [`core`]: the actor that owns every room; it reads the transport's
//!   sockets itself, and the console feeds it requests over a bounded channel.
//! - [`transport`]: the four ZeroMQ sockets, driven by the core's thread, with
//!   a bounded outbox per client.
//! - [`console`]: the admin console on stdin.
//! - [`health`]: the health check (`--health-check`).
//! - [`descriptors`]: the open-file limit, raised at start to what the
//!   limits need.
//! - `fuzzing`: entry points of the fuzz targets (`fuzz/`), one per decoder
//!   of the network or a file.
//! - [`report`]: errors as one line for a person, each cause once.
//! - [`memory`]: how the allocator gives freed memory back to the kernel.
//! - [`metrics`]: counters for Prometheus, and the optional HTTP listener
//!   for `/metrics` and `/status`.
//! - [`client`]: a blocking Rust client, used by the tests and tools.
//! - [`store`]: durable sessions: the data directory and session files.
//! - [`security`]: CURVE encryption: the server's key pair, the admitted
//!   client keys (ZAP), and the heartbeat port's front with the key service.
//! - [`server`]: wires the pieces together: `run(config, shutdown)`.
// Six audited exceptions: registering a socket's descriptor with tokio's
// reactor (`Transport::new`), frames that libzmq sends to several clients
// from one buffer (`transport::shared`), libzmq options the zmq crate does
// not expose (`transport::sockets`), setting the allocator's thresholds
// (`memory`), reading, shutting down and draining the connections and
// listeners libzmq owns (`transport::connections`), and deriving a public
// key from a secret one (`security::key`).
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod core;
pub mod descriptors;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod protocol;
pub mod report;
pub mod room;
pub mod security;
pub mod server;
pub mod store;
pub mod transport;
