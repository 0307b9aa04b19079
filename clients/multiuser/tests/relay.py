"""A TCP relay in front of a server's four ports, for one client, that can
hold back what the server sends on one channel.

Holding back the subscriber channel makes a client's view of the session
late on purpose, deterministically: it goes on sending (its updates still
reach the server, and the server's answers on the commands channel still
reach it) while the broadcasts that would tell it about others' changes
wait at the relay. Releasing them delivers everything, in order.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from support import free_base_port

COMMANDS, SUBSCRIBER, PUBLISHER, HEARTBEAT = range(4)


class Relay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._open = [threading.Event() for _ in range(4)]
        for gate in self._open:
            gate.set()
        self._stop = threading.Event()
        self._sent = [0, 0, 0, 0]  # bytes from the client, per channel
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> Relay:
        while True:
            base = free_base_port()
            listeners = []
            try:
                for channel in range(4):
                    s = socket.socket()
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", base + channel))
                    s.listen(8)
                    s.settimeout(0.2)
                    listeners.append(s)
            except OSError:
                for s in listeners:
                    s.close()
                continue
            break
        self.port = base
        for channel, listener in enumerate(listeners):
            self._track(listener)
            threading.Thread(target=self._accept, args=(channel, listener), daemon=True).start()
        return self

    @contextmanager
    def holding(self, channel: int) -> Iterator[None]:
        """Holds back what the server sends on ``channel`` inside the block."""
        self._open[channel].clear()
        try:
            yield
        finally:
            self._open[channel].set()

    def stop(self) -> None:
        self._stop.set()
        for gate in self._open:
            gate.set()
        with self._lock:
            for s in self._sockets:
                try:
                    s.close()
                except OSError:
                    pass

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.append(s)

    def _accept(self, channel: int, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port + channel))
            except OSError:
                client.close()
                continue
            self._track(client)
            self._track(server)
            directions = (
                (client, server, None, channel),
                (server, client, self._open[channel], None),
            )
            for src, dst, gate, counted in directions:
                threading.Thread(
                    target=self._pump, args=(src, dst, gate, counted), daemon=True
                ).start()

    def sent(self) -> list[int]:
        """Bytes the client has sent so far, per channel."""
        with self._lock:
            return list(self._sent)

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        gate: threading.Event | None,
        counted: int | None,
    ) -> None:
        try:
            while not self._stop.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if counted is not None:
                    with self._lock:
                        self._sent[counted] += len(data)
                if gate is not None:
                    gate.wait()  # what arrived while held waits here, in order
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
