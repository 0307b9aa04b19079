"""The commands, subscriber and publisher sockets, and an outbox in front.

ZeroMQ sockets must not be used by two threads at once. Every send
therefore goes through the outbox (a locked deque, safe from any thread),
and only the thread that pumps the transport touches the sockets: the
add-on's thread in :meth:`Session.poll`, or the background thread. A
socketpair wakes the background thread when something is queued, so
requests leave at once instead of at the next poll timeout.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Callable

import zmq

from .protocol import Channel

__all__ = ["Transport"]

Handler = Callable[[Channel, list[bytes]], None]


class Transport:
    def __init__(self, ctx: zmq.Context, host: str, port: int, identity: bytes) -> None:
        def dealer(channel: Channel) -> zmq.Socket:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.ROUTING_ID, identity)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://{host}:{port + channel}")
            return sock

        self.commands = dealer(Channel.COMMANDS)
        self.subscriber = dealer(Channel.SUBSCRIBER)
        self.publisher = ctx.socket(zmq.PUSH)
        # Lets updates already queued reach the server when the session closes.
        self.publisher.setsockopt(zmq.LINGER, 1000)
        self.publisher.connect(f"tcp://{host}:{port + Channel.PUBLISHER}")
        self._sockets = {
            Channel.COMMANDS: self.commands,
            Channel.SUBSCRIBER: self.subscriber,
            Channel.PUBLISHER: self.publisher,
        }
        self._out: deque[tuple[Channel, list[bytes]]] = deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._poller = zmq.Poller()
        self._poller.register(self.commands, zmq.POLLIN)
        self._poller.register(self.subscriber, zmq.POLLIN)
        self._poller.register(self._wake_r.fileno(), zmq.POLLIN)

    def enqueue(self, channel: Channel, frames: list[bytes]) -> None:
        """Queues one message; any thread may call this."""
        with self._lock:
            self._out.append((channel, frames))
        self.wakeup()

    def wakeup(self) -> None:
        """Makes a pump that is waiting return at once; any thread."""
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # already awake (buffer full), or closing

    def flush(self) -> bool:
        """Sends queued messages until libzmq pushes back (high-water mark).
        Pumping thread only. True when the outbox is empty."""
        while True:
            with self._lock:
                if not self._out:
                    return True
                channel, frames = self._out[0]
            try:
                self._sockets[channel].send_multipart(frames, flags=zmq.DONTWAIT)
            except zmq.Again:
                return False
            with self._lock:
                self._out.popleft()

    def pump(self, timeout: float, budget: float, handle: Handler) -> int:
        """Sends what is queued, waits up to ``timeout`` seconds for input, then
        hands every ready message to ``handle`` until none is left or
        ``budget`` seconds have been spent. Returns the number handled."""
        sent_all = self.flush()
        wait = timeout if sent_all else min(timeout, 0.005)
        self._poller.poll(max(0, int(wait * 1000)))
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        handled = 0
        deadline = time.monotonic() + budget
        for channel, sock in (
            (Channel.COMMANDS, self.commands),
            (Channel.SUBSCRIBER, self.subscriber),
        ):
            while time.monotonic() <= deadline or handled == 0:
                try:
                    frames = sock.recv_multipart(zmq.DONTWAIT)
                except zmq.Again:
                    break
                handle(channel, frames)
                handled += 1
                self.flush()  # acknowledgements and answers leave at once
        return handled

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._wake_r.close()
        self._wake_w.close()
