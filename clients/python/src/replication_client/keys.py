"""CURVE encryption for the client (protocol section 18).

An encrypting server is known by its public key (40 characters of Z85, as
libzmq writes keys) and its fingerprint, a short digest people compare by
reading it out. A client gets the key one of two ways:

- given: ``Session(..., server_key="...")``, from the server's admin;
- trusted on first use, as SSH does: the client asks the server
  (SERVER_KEY, on the heartbeat port, without encryption), pins the answer
  for that host and port in the known-servers file, and from then on
  refuses a server there that presents another key.

The client's own key pair, which a server with an authorized-keys list
checks, is kept in the user's configuration too, made on first use.

Run ``python -m replication_client.keys`` to print this computer's client
key (to send to a server's admin) and where the files are.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

from .codec import pack, unpack
from .errors import ChangedServerKey, ReplicationError, ServerKeyError, Timeout, WrongServerKey

__all__ = [
    "ClientKey",
    "KnownServers",
    "ServerKeys",
    "config_dir",
    "default_client_key_file",
    "default_known_servers_file",
    "fingerprint",
    "load_or_create_client_key",
    "server_name",
]

log = logging.getLogger("replication_client")

_Z85 = set(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


def _check_key(text: str | bytes) -> bytes:
    key = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    key = key.strip()
    if len(key) != 40 or not set(key) <= _Z85:
        raise ValueError(f"{text!r:.60} is not a CURVE key (40 characters of Z85)")
    return key


def fingerprint(public_key: str | bytes) -> str:
    """The key's fingerprint as the server prints it: the first 80 bits of
    the SHA-256 of its 32 bytes, in base32, four groups of four."""
    digest = hashlib.sha256(z85.decode(_check_key(public_key))).digest()
    text = base64.b32encode(digest[:10]).decode("ascii")
    return "-".join(text[i : i + 4] for i in range(0, 16, 4))


def config_dir() -> Path:
    """Where the client keeps its files: ``$REPLICATION_CONFIG_DIR``, else
    the system's place for settings (``%APPDATA%`` on Windows,
    ``~/Library/Application Support`` on macOS, ``$XDG_CONFIG_HOME`` or
    ``~/.config`` elsewhere), in a ``replication-serve`` folder."""
    explicit = os.environ.get("REPLICATION_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        base = Path(os.environ["APPDATA"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "replication-serve"


def default_known_servers_file() -> Path:
    """``$REPLICATION_KNOWN_SERVERS``, else ``known_servers`` in
    :func:`config_dir` (the Rust client reads the same file)."""
    explicit = os.environ.get("REPLICATION_KNOWN_SERVERS")
    return Path(explicit) if explicit else config_dir() / "known_servers"


def default_client_key_file() -> Path:
    """``$REPLICATION_CLIENT_KEY``, else ``client.key`` in :func:`config_dir`."""
    explicit = os.environ.get("REPLICATION_CLIENT_KEY")
    return Path(explicit) if explicit else config_dir() / "client.key"


def server_name(host: str, port: int) -> str:
    """``HOST:PORT`` as the known-servers file writes it (IPv6 in brackets)."""
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class KnownServers:
    """The known-servers file: ``HOST:PORT KEY`` per line, ``#`` comments."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_known_servers_file()

    def get(self, name: str) -> bytes | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split()
            if len(words) >= 2 and words[0] == name and not line.lstrip().startswith("#"):
                try:
                    return _check_key(words[1])
                except ValueError as e:
                    raise ServerKeyError(f"{self.path} line {number}: {e}") from None
        return None

    def pin(self, name: str, key: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{name} {key.decode('ascii')}\n")


@dataclass(frozen=True)
class ClientKey:
    public: bytes
    secret: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)


def load_or_create_client_key(path: str | os.PathLike[str] | None = None) -> ClientKey:
    """The client's key pair from its file (``public_key`` and ``secret_key``
    lines, as the server's key file), made there on first use, readable by
    its owner only."""
    path = Path(path) if path is not None else default_client_key_file()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        public, secret = zmq.curve_keypair()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(
                "# replication-serve client key. Keep it secret; a server's admin\n"
                "# admits this client by its public key.\n"
                f'public_key = "{public.decode()}"\nsecret_key = "{secret.decode()}"\n'
            )
        os.replace(temporary, path)
        return ClientKey(public, secret)
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            values[key.strip()] = value.strip().strip('"')
    try:
        public = _check_key(values["public_key"])
        secret = _check_key(values["secret_key"])
    except (KeyError, ValueError) as e:
        raise ServerKeyError(f"the client key {path} is not a key file: {e}") from None
    if zmq.curve_public(secret) != public:
        raise ServerKeyError(
            f"the client key {path}: public_key is not the public half of secret_key"
        )
    return ClientKey(public, secret)


@dataclass(frozen=True)
class ServerKeys:
    """What the sockets encrypt with."""

    server: bytes
    client: ClientKey
    first_use: bool = False

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.server)

    def apply(self, sock: zmq.Socket) -> None:
        """Sets a socket up as a CURVE client (before it connects)."""
        sock.curve_serverkey = self.server
        sock.curve_publickey = self.client.public
        sock.curve_secretkey = self.client.secret


#: Seconds between two SERVER_KEY requests while no answer came.
ASK_AGAIN = 1.0


def ask_server_key(
    ctx: zmq.Context,
    host: str,
    port: int,
    timeout: float,
    stop: threading.Event | None = None,
) -> bytes | None:
    """SERVER_KEY on the heartbeat port (``port + 3``), without encryption:
    the server's public key, or None when it does not encrypt. ``stop``
    gives up early (the session is closing)."""
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{host}:{port + 3}")
        deadline = time.monotonic() + timeout
        next_ask = 0.0
        while True:
            now = time.monotonic()
            left = deadline - now
            if left <= 0 or (stop is not None and stop.is_set()):
                name = server_name(host, port)
                raise Timeout(f"no answer from {name} (port {port + 3}) within {timeout:g} s")
            if now >= next_ask:
                # Asked again every second: a request sent while the server
                # was starting, or on a connection cut before it was read,
                # is lost, and asking twice costs nothing.
                try:
                    sock.send(pack({"type": "SERVER_KEY", "id": 1}), zmq.NOBLOCK)
                except zmq.Again:
                    pass
                next_ask = now + ASK_AGAIN
            if not sock.poll(int(min(left, 0.1) * 1000) + 1, zmq.POLLIN):
                continue
            try:
                msg = unpack(sock.recv_multipart()[0])
            except Exception:
                continue
            if not isinstance(msg, dict) or msg.get("type") != "SERVER_KEY":
                continue
            if msg.get("encryption") == "none":
                return None
            if msg.get("encryption") == "curve":
                try:
                    return _check_key(msg.get("public_key", ""))
                except ValueError as e:
                    raise ServerKeyError(f"the server's SERVER_KEY: {e}") from None
            raise ServerKeyError(
                f"the server's SERVER_KEY names no known encryption: {msg.get('encryption')!r:.40}"
            )
    finally:
        sock.close()


def changed_key_message(name: str, known: bytes, presented: bytes | None, file: Path) -> str:
    """What the client says when a pinned server presents another key (the
    Rust client says the same)."""
    if presented is not None:
        what = (
            f"presents a different key (fingerprint {fingerprint(presented)}) than the one "
            f"this computer trusted on its first connection (fingerprint {fingerprint(known)})"
        )
    else:
        what = (
            "no longer encrypts, though it did on this computer's first connection "
            f"(fingerprint {fingerprint(known)})"
        )
    return (
        f"the server at {name} {what}. Someone may be intercepting the connection, or the "
        "server's admin made a new key (a new data directory, a reinstalled server). Ask the "
        "admin for the fingerprint the server printed at start (or its console's `key`); if "
        f"they match, accept the new key by deleting the line for {name} from {file}, then "
        "connect again."
    )


def resolve(
    ctx: zmq.Context,
    host: str,
    port: int,
    *,
    server_key: str | bytes | None,
    known_servers: KnownServers,
    client_key: str | os.PathLike[str] | None,
    timeout: float,
    stop: threading.Event | None = None,
) -> ServerKeys | None:
    """The keys to encrypt with (None: plain), after checking what the
    server presents against the key given or pinned. Raises
    :class:`ServerKeyError` (or :class:`Timeout`)."""
    name = server_name(host, port)
    presented = ask_server_key(ctx, host, port, timeout, stop)
    if server_key is not None:
        expected = _check_key(server_key)
        if presented != expected:
            says = (
                f"presents the key with fingerprint {fingerprint(presented)}"
                if presented is not None
                else "says it does not encrypt"
            )
            raise WrongServerKey(
                f"the server at {name} {says}, not the key given (fingerprint "
                f"{fingerprint(expected)}): check the key with the server's admin (the server "
                "prints it at start, and its console's key shows it)"
            )
        return ServerKeys(expected, load_or_create_client_key(client_key))
    known = known_servers.get(name)
    if known is not None and presented != known:
        raise ChangedServerKey(changed_key_message(name, known, presented, known_servers.path))
    if presented is None:
        return None
    first_use = known is None
    if first_use:
        known_servers.pin(name, presented)
        log.warning(
            "first connection to %s: trusting its key, fingerprint %s (pinned in %s); "
            "compare it with the fingerprint the server's admin reads you",
            name,
            fingerprint(presented),
            known_servers.path,
        )
    return ServerKeys(presented, load_or_create_client_key(client_key), first_use)


class KeyResolver(threading.Thread):
    """Runs :func:`resolve` off the caller's thread, so that connecting
    never waits for the server (as without encryption)."""

    def __init__(self, ctx: zmq.Context, host: str, port: int, **options: object) -> None:
        super().__init__(name="replication-keys", daemon=True)
        self._args = (ctx, host, port)
        self._giving_up = threading.Event()
        self._options = dict(options, stop=self._giving_up)
        self.done = threading.Event()
        self.keys: ServerKeys | None = None
        self.error: ReplicationError | None = None

    def stop(self) -> None:
        """Gives up asking (the session is closing) and waits, briefly."""
        self._giving_up.set()
        self.join(1.0)

    def run(self) -> None:
        try:
            self.keys = resolve(*self._args, **self._options)  # type: ignore[arg-type]
        except ReplicationError as e:
            self.error = e
        except (zmq.ZMQError, OSError, ValueError) as e:
            self.error = ServerKeyError(f"cannot set up encryption: {e}")
        finally:
            self.done.set()


def _main() -> None:
    key = load_or_create_client_key()
    print(f"client public key: {key.public.decode()}")
    print(f"fingerprint:       {key.fingerprint}")
    print(f"client key file:   {default_client_key_file()}")
    print(f"known servers:     {default_known_servers_file()}")


if __name__ == "__main__":
    _main()
