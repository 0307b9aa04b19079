//! zeromq-src's API as zmq-sys uses it, building libzmq with CURVE.
//!
//! zmq-sys calls `Build::new().with_libsodium(None).build()`. Here `None`
//! means the libsodium bundled with libsodium-sys-stable, and the draft API
//! is always on (the server needs `ZMQ_ROUTER_NOTIFY`).

pub use upstream::LibLocation;

/// Settings for building libzmq, as in zeromq-src.
#[derive(Debug, Clone, Default)]
pub struct Build {
    libsodium: Option<LibLocation>,
}

impl Build {
    /// A build with the bundled libsodium.
    pub fn new() -> Self {
        Self::default()
    }

    /// Links another libsodium instead of the bundled one (`None` keeps the
    /// bundled one: CURVE is never left out).
    pub fn with_libsodium(&mut self, location: Option<LibLocation>) -> &mut Self {
        self.libsodium = location;
        self
    }

    /// Builds libzmq and tells cargo to link it and libsodium.
    pub fn build(&mut self) {
        let libsodium = self.libsodium.clone().unwrap_or_else(|| {
            LibLocation::new(env!("LIBSODIUM_LIB_DIR"), env!("LIBSODIUM_INCLUDE_DIR"))
        });
        upstream::Build::new()
            .enable_draft(true)
            .with_libsodium(Some(libsodium))
            .build();
    }
}
