//! The layers a session file is read through.

use std::io::{self, BufRead, Read};

/// Counts the bytes read (or consumed, as a `BufRead`) through it.
pub(super) struct Counted<R> {
    pub(super) inner: R,
    pub(super) count: u64,
}

impl<R> Counted<R> {
    pub(super) fn new(inner: R) -> Self {
        Self { inner, count: 0 }
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += u64::try_from(n).unwrap_or(u64::MAX);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt);
        self.count += u64::try_from(amt).unwrap_or(u64::MAX);
    }
}

/// Remembers the first error of the reader below it, whether it ended and
/// how much it delivered, so that a failure seen above (by the MessagePack
/// reader) can be traced to its layer: the file or the decompressor.
pub(super) struct Watched<R> {
    pub(super) inner: R,
    pub(super) error: Option<io::Error>,
    pub(super) eof: bool,
    pub(super) count: u64,
}

impl<R> Watched<R> {
    pub(super) fn new(inner: R) -> Self {
        Self {
            inner,
            error: None,
            eof: false,
            count: 0,
        }
    }
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.eof = true;
                Ok(0)
            }
            Ok(n) => {
                self.count += u64::try_from(n).unwrap_or(u64::MAX);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                if self.error.is_none() {
                    self.error = Some(e);
                }
                Err(copy)
            }
        }
    }
}
