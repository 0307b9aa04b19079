"""The commands, subscriber and publisher sockets, and an outbox in front.

ZeroMQ sockets must not be used by two threads at once. Every send
therefore goes through the outbox (a locked deque, safe from any thread),
and only the thread that pumps the transport touches the sockets: the
add-on's thread in :meth:`Session.poll`, or the background thread. A
socketpair wakes the background thread when something is queued, so
requests leave at once instead of at the next poll timeout.

The sockets connect once :meth:`open` knows whether and with which keys to
encrypt (:mod:`.keys`); until then requests wait in the outbox. They wait
a little longer, until the subscriber socket's handshake is done (at most
:data:`SUBSCRIBER_HEAD_START`): a subscriber connection the server sees
only after AUTH must prove the session with RESUME (protocol section 1),
which only a pumping session answers, so an idle session would be dropped.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from .keys import ServerKeys
from .protocol import Channel

__all__ = ["Transport"]

#: A received frame: ``bytes``, or a read-only view of the buffer libzmq
#: received it into when it is at least :data:`KEEP_FRAME_MIN` bytes.
Frame = bytes | memoryview
Handler = Callable[[Channel, list[Frame]], None]

#: From this size a frame is handed on as a view of libzmq's buffer instead
#: of being copied into ``bytes``: the chunks of a large datablock are then
#: copied once, into the whole payload (:class:`~.stream.Reassembler`).
KEEP_FRAME_MIN = 64 * 1024

# How long the outbox waits for the subscriber's handshake before sending
# anyway (a server that does not answer yet; AUTH then waits in libzmq).
SUBSCRIBER_HEAD_START = 1.0


class Transport:
    def __init__(self, ctx: zmq.Context, host: str, port: int, identity: bytes) -> None:
        def dealer() -> zmq.Socket:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.ROUTING_ID, identity)
            sock.setsockopt(zmq.LINGER, 0)
            return sock

        self._host = host
        self._port = port
        self.opened = False
        self.commands = dealer()
        self.subscriber = dealer()
        self.publisher = ctx.socket(zmq.PUSH)
        # Lets updates already queued reach the server when the session closes.
        self.publisher.setsockopt(zmq.LINGER, 1000)
        self._handshakes: zmq.Socket | None = None
        # The subscriber's handshake, watched from open() until it is done.
        self._connecting: zmq.Socket | None = None
        self._hold_until = 0.0
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

    def open(self, keys: ServerKeys | None) -> None:
        """Connects the sockets, encrypting with ``keys`` when given.
        Pumping thread only."""
        if keys is not None:
            for sock in self._sockets.values():
                keys.apply(sock)
            # A client key the server does not admit shows only here.
            self._handshakes = self.commands.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
            self._poller.register(self._handshakes, zmq.POLLIN)
        self._connecting = self.subscriber.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self._hold_until = time.monotonic() + SUBSCRIBER_HEAD_START
        for channel in (Channel.SUBSCRIBER, Channel.PUBLISHER, Channel.COMMANDS):
            self._sockets[channel].connect(f"tcp://{self._host}:{self._port + channel}")
        self.opened = True

    def _holding(self) -> bool:
        """Whether the outbox still waits for the subscriber's handshake."""
        if self._connecting is None:
            return False
        done = time.monotonic() >= self._hold_until
        while not done:
            try:
                recv_monitor_message(self._connecting, zmq.DONTWAIT)
            except zmq.Again:
                break
            done = True
        if done:
            self._stop_watching_subscriber()
        return not done

    def _stop_watching_subscriber(self) -> None:
        if self._connecting is not None:
            self.subscriber.disable_monitor()
            self._connecting.close()
            self._connecting = None

    def refused_key(self) -> bool:
        """Whether the server refused this client's key since last asked
        (a ZAP refusal of the encrypted handshake). Pumping thread only."""
        refused = False
        while self._handshakes is not None:
            try:
                event = recv_monitor_message(self._handshakes, zmq.DONTWAIT)
            except zmq.Again:
                break
            refused |= event.get("event") == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        return refused

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
        if self._holding():
            return False
        while self.opened:
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
        return False

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
                    received = sock.recv_multipart(zmq.DONTWAIT, copy=False)
                except zmq.Again:
                    break
                handle(channel, [_frame(f) for f in received])
                handled += 1
                self.flush()  # acknowledgements and answers leave at once
        return handled

    def close(self) -> None:
        self._stop_watching_subscriber()
        if self._handshakes is not None:
            self.commands.disable_monitor()
            self._handshakes.close()
        for sock in self._sockets.values():
            sock.close()
        self._wake_r.close()
        self._wake_w.close()


def _frame(frame: zmq.Frame) -> Frame:
    if len(frame) < KEEP_FRAME_MIN:
        return frame.bytes
    return frame.buffer
