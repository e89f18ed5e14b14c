"""A minimal LSP server over stdio that records what the client sends, for the editor tests (cursor.lua).

    python recording_server.py RECORD_FILE [POSITION_ENCODING]

Every message from the client is appended to RECORD_FILE as one JSON line, {"t": seconds since start, "method",
"params", "id"?}, written and flushed before the next message is read. It answers `initialize` with incremental
document sync and POSITION_ENCODING (default utf-16) when the client offers it, `shutdown` with null, every other
request with null, and exits on `exit` or at the end of its input. Standard library only.
"""

from __future__ import annotations

import json
import sys
import time


def read_message(stream) -> dict | None:
    length = None
    while True:
        line = stream.readline()
        if not line:
            return None
        line = line.strip()
        if not line:
            break
        name, _, value = line.decode("ascii").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length is None:
        raise ValueError("a message without Content-Length")
    return json.loads(stream.read(length).decode("utf-8"))


def write_message(stream, message: dict) -> None:
    body = json.dumps(message, ensure_ascii=False).encode("utf-8")
    stream.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    stream.flush()


def main() -> int:
    record_path = sys.argv[1]
    wanted = sys.argv[2] if len(sys.argv) > 2 else "utf-16"
    t0 = time.monotonic()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    with open(record_path, "a", encoding="utf-8") as record:
        while True:
            msg = read_message(stdin)
            if msg is None:
                return 0
            method = msg.get("method")
            entry = {"t": round(time.monotonic() - t0, 4), "method": method, "params": msg.get("params")}
            if "id" in msg:
                entry["id"] = msg["id"]
            record.write(json.dumps(entry, ensure_ascii=False) + "\n")
            record.flush()
            if method == "exit":
                return 0
            if "id" not in msg or method is None:
                continue  # a notification, or a response to a request of ours (we send none)
            result = None
            if method == "initialize":
                offered = (((msg.get("params") or {}).get("capabilities") or {}).get("general") or {}).get(
                    "positionEncodings") or ["utf-16"]
                result = {
                    "capabilities": {
                        "positionEncoding": wanted if wanted in offered else "utf-16",
                        "textDocumentSync": {"openClose": True, "change": 2},
                    },
                    "serverInfo": {"name": "recording-server"},
                }
            write_message(stdout, {"jsonrpc": "2.0", "id": msg["id"], "result": result})


if __name__ == "__main__":
    sys.exit(main())
