"""A late joiner for replication-bench: joins a running server once with the
Python client and prints what it measured as one line of JSON.

    python join.py --port PORT --datablocks N [--bytes B]

The time runs from before the connection to the moment the last datablock
is in the replica, as the Rust joiner's does; the CPU time is this
process's, all threads. The scene is checked: N datablocks holding at least
B bytes of binary data in all.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from replication_client import Session


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="the server's base port")
    parser.add_argument("--datablocks", type=int, required=True, help="datablocks expected")
    parser.add_argument("--bytes", type=int, default=0, help="binary data expected, in bytes")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait at most")
    args = parser.parse_args()

    started, cpu = time.perf_counter(), time.process_time()
    session = Session(port=args.port, user="python-joiner")
    try:
        session.connect()
        session.authenticate(timeout=args.timeout)
        blocks = session.download(timeout=args.timeout)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        data = sum(len(b.data) for b in blocks.values() if isinstance(b.data, bytes))
    finally:
        session.close()
    if len(blocks) != args.datablocks or data < args.bytes:
        print(
            f"downloaded {len(blocks)} datablocks with {data} bytes of data, "
            f"expected {args.datablocks} with {args.bytes}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "datablocks": len(blocks)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
