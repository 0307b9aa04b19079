//! A frame sent to several clients from one buffer.
//!
//! The zmq crate copies every frame it is given, so a forwarded update went
//! through one allocation and one copy per recipient, each freed later by
//! libzmq's I/O thread. libzmq itself can share a buffer between messages
//! (`zmq_msg_copy` adds a reference), which the crate does not expose: this
//! module does it through `zmq-sys`, the crate's own binding. It is the one
//! place besides the reactor registration where the server uses `unsafe`.
#![allow(unsafe_code)]

use std::os::raw::c_void;

use bytes::Bytes;

/// Frames up to this size are stored inside libzmq's message itself
/// (`ZMQ_MAX_VSM_SIZE`): copying them is cheaper than sharing.
pub(super) const INLINE_MAX: usize = 33;

/// One frame's bytes, handed to libzmq once and sent any number of times.
pub(super) struct SharedFrame {
    msg: zmq_sys::zmq_msg_t,
}

impl SharedFrame {
    /// Hands `data` to libzmq without copying it. libzmq releases it (from
    /// its I/O thread) once this frame and every message sent from it are
    /// gone.
    pub(super) fn new(data: Bytes) -> Result<Self, zmq::Error> {
        let len = data.len();
        let ptr = data.as_ptr().cast_mut().cast::<c_void>();
        let owner = Box::into_raw(Box::new(data));
        let mut msg = zmq_sys::zmq_msg_t { __: [0; 64] };
        // SAFETY: `ptr` points to `len` bytes owned by the `Bytes` behind
        // `owner`, which stay valid and unchanged until `release` drops it.
        // libzmq only reads them, and calls `release` exactly once, with
        // `owner` as the hint, when the last reference goes.
        let rc = unsafe {
            zmq_sys::zmq_msg_init_data(&raw mut msg, ptr, len, Some(release), owner.cast())
        };
        if rc != 0 {
            let error = last_error();
            // SAFETY: libzmq refused the buffer, so `owner` is still ours
            // alone.
            drop(unsafe { Box::from_raw(owner) });
            return Err(error);
        }
        Ok(Self { msg })
    }

    /// Sends the frame on `socket`: the message libzmq queues shares this
    /// frame's buffer.
    pub(super) fn send(&mut self, socket: &mut zmq::Socket, flags: i32) -> Result<(), zmq::Error> {
        let mut copy = zmq_sys::zmq_msg_t { __: [0; 64] };
        // SAFETY: `copy` and `self.msg` are initialised messages (libzmq's
        // rules for zmq_msg_copy and zmq_msg_send). A sent message belongs
        // to libzmq; one that was not sent is closed here. The socket pointer
        // comes from a live socket borrowed for the call.
        unsafe {
            if zmq_sys::zmq_msg_init(&raw mut copy) != 0 {
                return Err(last_error());
            }
            if zmq_sys::zmq_msg_copy(&raw mut copy, &raw mut self.msg) != 0 {
                let error = last_error();
                zmq_sys::zmq_msg_close(&raw mut copy);
                return Err(error);
            }
            if zmq_sys::zmq_msg_send(&raw mut copy, socket.as_mut_ptr(), flags) == -1 {
                let error = last_error();
                zmq_sys::zmq_msg_close(&raw mut copy);
                return Err(error);
            }
        }
        Ok(())
    }
}

impl Drop for SharedFrame {
    fn drop(&mut self) {
        // SAFETY: `msg` was initialised in `new` and is closed only here.
        unsafe {
            zmq_sys::zmq_msg_close(&raw mut self.msg);
        }
    }
}

/// libzmq's release callback for the buffers of [`SharedFrame`]s.
unsafe extern "C" fn release(_data: *mut c_void, hint: *mut c_void) {
    // SAFETY: `hint` is the `Box<Bytes>` leaked in `SharedFrame::new`, and
    // libzmq calls this once, after the last message using it is gone.
    drop(unsafe { Box::from_raw(hint.cast::<Bytes>()) });
}

fn last_error() -> zmq::Error {
    // SAFETY: reads libzmq's thread-local errno; no arguments.
    zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every client receives the same bytes, and the buffer is released
    /// once the last copy is gone (the `Bytes` is unique again).
    #[test]
    fn a_shared_frame_reaches_every_peer_and_is_released() {
        let ctx = zmq::Context::new();
        let mut router = ctx.socket(zmq::ROUTER).unwrap();
        router.set_router_mandatory(true).unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = router.get_last_endpoint().unwrap().unwrap();
        let peers: Vec<zmq::Socket> = (0..3)
            .map(|i| {
                let s = ctx.socket(zmq::DEALER).unwrap();
                s.set_identity(format!("peer-{i}").as_bytes()).unwrap();
                s.connect(&endpoint).unwrap();
                // Say hello, so the router knows the identity.
                s.send("hi", 0).unwrap();
                s
            })
            .collect();
        for _ in 0..3 {
            let parts = router.recv_multipart(0).unwrap();
            assert_eq!(parts[1], b"hi");
        }
        let data = Bytes::from(vec![7u8; 4096]);
        let weak = data.clone();
        let mut frame = SharedFrame::new(data).unwrap();
        for i in 0..3 {
            router
                .send(format!("peer-{i}").as_bytes(), zmq::SNDMORE)
                .unwrap();
            frame.send(&mut router, 0).unwrap();
        }
        // As a first frame it names a peer that does not exist: refused,
        // and the refused copy is closed.
        assert_eq!(
            frame.send(&mut router, zmq::SNDMORE | zmq::DONTWAIT),
            Err(zmq::Error::EHOSTUNREACH)
        );
        for peer in &peers {
            let got = peer.recv_bytes(0).unwrap();
            assert_eq!(got, vec![7u8; 4096]);
        }
        drop(frame);
        drop(peers);
        drop(router);
        drop(ctx);
        // Only `weak` holds the buffer now.
        assert!(weak.is_unique());
    }
}
