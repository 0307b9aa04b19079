"""Answers the server's PINGs on a thread of its own.

The heartbeat channel has its own socket, so a thread that owns that one
socket can answer PINGs without touching the others and without any help
from the add-on: the session stays alive while Blender is busy drawing,
loading or evaluating and no timer runs. Blender's main thread holds
Python's GIL only while it runs Python code, and pyzmq releases it while
waiting, so this thread keeps running then. Only a single Python call that
holds the GIL longer than the server's timeout (a long operator started from
a script) can still starve it.

It also watches for the server's silence: no PING for longer than
``timeout_ms`` means the server is gone (section 9), and answers the
server's RESUME, which asks a new connection (libzmq reconnected the
socket) to prove the session with its token (section 1).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import zmq

from .codec import pack, unpack
from .keys import KeyResolver

__all__ = ["Heartbeat"]


class Heartbeat(threading.Thread):
    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        identity: bytes,
        on_silence: Callable[[float], None],
        keys: KeyResolver | None = None,
    ) -> None:
        super().__init__(name="replication-heartbeat", daemon=True)
        self._keys = keys
        self._ctx = ctx
        self._endpoint = endpoint
        self._identity = identity
        self._on_silence = on_silence
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self.answer_pings = True
        self.pings = 0
        # The session token, set by the session after AUTH and on room
        # switches; None while there is no session.
        self.token: bytes | None = None
        self._resume_due = False
        # Set by the session after AUTH; None while there is no session.
        self._watch: tuple[float, float] | None = None  # (start, allowed silence)
        self._last_ping = 0.0

    def start_and_wait(self) -> None:
        self.start()
        self._ready.wait(5.0)

    def watch(self, timeout_ms: int, heartbeat_ms: int) -> None:
        """Starts watching for silence (after a successful AUTH)."""
        now = time.monotonic()
        self._last_ping = now
        self._watch = (now, (timeout_ms + heartbeat_ms) / 1000.0)

    def unwatch(self) -> None:
        self._watch = None

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.ROUTING_ID, self._identity)
            sock.setsockopt(zmq.LINGER, 0)
            self._ready.set()
            # Connects once it is known whether, and how, to encrypt.
            while self._keys is not None and not self._keys.done.wait(0.1):
                if self._stopping.is_set():
                    return
            if self._keys is not None and self._keys.error is not None:
                return  # the session fails with the error; nothing to answer
            if self._keys is not None and self._keys.keys is not None:
                self._keys.keys.apply(sock)
            sock.connect(self._endpoint)
            while not self._stopping.is_set():
                if sock.poll(100, zmq.POLLIN):
                    self._drain(sock)
                if self._resume_due:
                    self._resume(sock)
                self._check_silence()
        except zmq.ZMQError:
            pass  # the context is being destroyed
        finally:
            self._ready.set()
            sock.close()

    def _drain(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.DONTWAIT)
            except zmq.Again:
                return
            try:
                msg = unpack(frames[0])
            except Exception:
                continue  # not ours to report: nothing on this channel needs an answer
            if isinstance(msg, dict) and msg.get("type") == "PING":
                self.pings += 1
                self._last_ping = time.monotonic()
                if self.answer_pings:
                    sock.send(pack({"type": "PONG", "seq": msg.get("seq", 0)}))
            elif isinstance(msg, dict) and msg.get("type") == "RESUME":
                self._resume_due = True
                self._resume(sock)

    def _resume(self, sock: zmq.Socket) -> None:
        token = self.token
        if token is None:
            return  # answered once AUTH has given the token
        self._resume_due = False
        sock.send(pack({"type": "RESUME", "token": token.decode("utf-8")}))

    def _check_silence(self) -> None:
        watch = self._watch
        if watch is None:
            return
        silent = time.monotonic() - self._last_ping
        if silent > watch[1]:
            self._watch = None
            self._on_silence(silent)
