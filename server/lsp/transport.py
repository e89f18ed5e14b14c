"""The LSP base protocol on a byte stream, written so that no byte sequence can silence the server.

pygls' own reader waits for a `Content-Length` header and a blank line; after one malformed header (missing,
zero, negative, hexadecimal, LF-only, off by one) it never finds the next message again, a huge length
exhausts memory, and its `json.loads(object_hook=...)` turns every nested object with a "jsonrpc" key into a
message. This module replaces that reader:

- `FrameReader` is a pure state machine fed bytes: it splits the stream into message bodies and, on anything
  that is not a well-formed header block, reports one `FrameError` and resynchronises on the next
  `Content-Length:` (case-insensitive, found anywhere, even glued to the end of a short body). Lengths are
  bounded (`MAX_CONTENT_LENGTH`), header blocks too; memory stays bounded whatever arrives.
- `parse_body` turns a body into a JSON-RPC envelope or a `BadMessage` that names the JSON-RPC error and, when
  it can be recovered from a body that does not parse, the request's id, so the client can match the error to
  its request. JSON that ends before the body does (a Content-Length one too long) is accepted and the extra
  bytes go back to the reader: they are the start of the next header.
- `Connection` sits between a transport and pygls' protocol: it answers every bad frame or message with the
  error the JSON-RPC specification names (id null where none is known) and hands the rest to the protocol.
- `serve_stdio`, `serve_tcp` and `serve_unix` run a server on stdio, on TCP (127.0.0.1 only; the client must
  present this start's token in `initializationOptions.token`) or on a Unix socket (mode 0600), one client at a
  time.

Everything here runs on the event loop thread except the blocking stdin read, which has its own thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import json
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional, Union

log = logging.getLogger(__name__)

MAX_CONTENT_LENGTH = 64 << 20  # the largest message body accepted (64 MiB)
MAX_HEADER_BYTES = 8192  # a header block longer than this is not a header block
READ_CHUNK = 1 << 16
AUTH_TIMEOUT_S = 10.0  # an unauthenticated TCP connection must send its initialize within this time
# The id of a malformed body is looked for in its first bytes only (clients write it near the start).
ID_SCAN_BYTES = 1 << 20

# JSON-RPC 2.0 error codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603

_TOKEN_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIGITS = re.compile(rb"[0-9]{1,19}")
_CONTENT_LENGTH = re.compile(rb"(?i)content-length:")
_KEEP = len(b"content-length:") - 1  # bytes kept while searching, in case the marker is split between reads


# ------------------------------------------------------------------------------------------------ frames


@dataclass(frozen=True)
class Frame:
    """One message body, as the header block framed it."""

    body: bytes


@dataclass(frozen=True)
class FrameError:
    """Bytes that were not a well-formed message frame (skipped up to the next Content-Length header)."""

    reason: str


class FrameReader:
    """Splits a byte stream into `Frame`s; see the module docstring. Pure: `feed` stores bytes, `next` returns
    the next frame or error (None when more bytes are needed). A frame is found only when asked for, so bytes
    put back with `unread` are read before anything after them."""

    def __init__(self, max_length: int = MAX_CONTENT_LENGTH):
        self.max_length = max_length
        self._buf = bytearray()
        self._pos = 0
        self._state = "headers"  # headers | body | resync
        self._body_length = 0
        self._new_block()

    def _new_block(self) -> None:
        self._length: Optional[int] = None
        self._bad: Optional[str] = None
        self._lines = 0
        self._bytes = 0

    @property
    def buffered(self) -> int:
        """Bytes held (a frame in progress)."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        if self._pos > (1 << 16) or self._pos == len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of what has not been read yet (the start of the next frame)."""
        self._buf[self._pos:self._pos] = data

    def events(self, data: bytes = b"") -> list[Union[Frame, FrameError]]:
        """`feed(data)`, then every frame and error that can be read now."""
        self.feed(data)
        out = []
        while (item := self.next()) is not None:
            out.append(item)
        return out

    def next(self) -> Optional[Union[Frame, FrameError]]:
        while True:
            if self._state == "body":
                if len(self._buf) - self._pos < self._body_length:
                    return None
                end = self._pos + self._body_length
                frame = Frame(bytes(self._buf[self._pos:end]))
                self._pos = end
                self._state = "headers"
                self._new_block()
                return frame
            if self._state == "resync":
                m = _CONTENT_LENGTH.search(self._buf, self._pos)
                if m is None:
                    self._pos = max(self._pos, len(self._buf) - _KEEP)
                    return None
                self._pos = m.start()
                self._state = "headers"
                self._new_block()
                continue
            found = self._header_line()
            if found is not False:
                return found  # an error, or None: more bytes needed

    def _resync(self, reason: str, at: int) -> FrameError:
        """Skip to the next Content-Length header at or after `at`; the frame in progress is an error."""
        self._state = "resync"
        self._pos = at
        return FrameError(reason)

    def _header_line(self) -> Union[None, bool, FrameError]:
        """Read one header line: False when it was read and reading goes on, None when more bytes are needed,
        or the error of a malformed header block."""
        start = self._pos
        nl = self._buf.find(b"\n", start)
        if nl < 0:
            if len(self._buf) - start > MAX_HEADER_BYTES:
                return self._resync(f"a header line longer than {MAX_HEADER_BYTES} bytes", start + 1)
            return None
        line = bytes(self._buf[start:nl])
        if line.endswith(b"\r"):
            line = line[:-1]
        self._pos = nl + 1
        if not line.strip():
            if self._lines == 0:
                return False  # a stray line break between messages
            if self._bad is not None or self._length is None:
                # The body that may follow has no usable length: skip it up to the next header.
                return self._resync(self._bad or "a header block without Content-Length", self._pos)
            self._state = "body"
            self._body_length = self._length
            return False
        self._lines += 1
        self._bytes += len(line)
        if self._lines > 32 or self._bytes > MAX_HEADER_BYTES:
            return self._resync(f"a header block longer than {MAX_HEADER_BYTES} bytes", start + 1)
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN_NAME.fullmatch(name):
            # Not a header: the rest of a body whose Content-Length was too short, or noise. The next header may
            # start on this very line.
            return self._resync(f"not a header line: {line[:60]!r}", start + 1)
        if name.lower() == b"content-length" and self._bad is None:
            value = value.strip()
            if not _DIGITS.fullmatch(value):
                self._bad = f"Content-Length is not a decimal number: {value[:40]!r}"
            else:
                n = int(value)
                if n == 0:
                    self._bad = "Content-Length 0: an empty body is no message"
                elif n > self.max_length:
                    self._bad = f"Content-Length {n} is larger than the limit of {self.max_length} bytes"
                elif self._length is not None and n != self._length:
                    self._bad = "conflicting Content-Length headers"
                else:
                    self._length = n
            if self._bad is not None:
                return self._resync(self._bad, self._pos)
        return False


# ------------------------------------------------------------------------------------------------ messages


@dataclass(frozen=True)
class BadMessage:
    """A body that is no valid JSON-RPC message, and the error to answer it with."""

    id: Optional[Union[int, str]]
    code: int
    message: str


_SCAN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]', re.S)
_ID_VALUE = re.compile(r'\s*:\s*(-?(?:0|[1-9][0-9]{0,18})(?![.0-9eE])|"(?:[^"\\]|\\.)*")', re.S)


def recover_id(body: bytes) -> Optional[Union[int, str]]:
    """The top-level "id" of a body that does not parse as a whole (truncated, too deep, bad bytes)."""
    text = body[:ID_SCAN_BYTES].decode("utf-8", "replace")
    depth = 0
    for m in _SCAN.finditer(text):
        tok = m.group(0)
        if tok[0] == '"':
            if depth == 1 and tok == '"id"':
                v = _ID_VALUE.match(text, m.end())
                if v is not None:
                    try:
                        value = json.loads(v.group(1))
                    except ValueError:
                        return None
                    return value if isinstance(value, (int, str)) else None
        elif tok in "{[":
            depth += 1
        else:
            depth -= 1
    return None


def valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def parse_body(body: bytes) -> tuple[Optional[dict], Optional[BadMessage], bytes]:
    """(message, None, rest) for a well-formed JSON-RPC 2.0 object, else (None, error, rest). `rest`: bytes after
    the JSON value that belong to the next frame (a Content-Length that was too long)."""
    rest = b""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, BadMessage(recover_id(body), PARSE_ERROR, f"parse error: the body is not UTF-8 ({e.reason})"), b""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg != "Extra data":
            return None, BadMessage(recover_id(body), PARSE_ERROR,
                                    f"parse error: {e.msg} at character {e.pos}"), b""
        try:
            obj, end = json.JSONDecoder().raw_decode(text)
        except (ValueError, RecursionError):
            return None, BadMessage(recover_id(body), PARSE_ERROR, f"parse error: {e.msg}"), b""
        extra = text[end:].lstrip()
        marker, low = "content-length:", extra.lower()
        if not (marker.startswith(low) or low.startswith(marker)):
            return None, BadMessage(recover_id(body), PARSE_ERROR,
                                    f"parse error: {e.msg} at character {e.pos}"), b""
        rest = extra.encode("utf-8")
    except RecursionError:
        return None, BadMessage(recover_id(body), PARSE_ERROR, "parse error: the JSON is nested too deeply"), b""
    if not isinstance(obj, dict):
        kind = "a batch (JSON-RPC batches are not part of the LSP)" if isinstance(obj, list) else type(obj).__name__
        return None, BadMessage(None, INVALID_REQUEST, f"invalid request: expected a JSON-RPC object, got {kind}"), rest
    msg_id = obj.get("id")
    has_id = "id" in obj
    if has_id and not valid_id(msg_id):
        if msg_id is None and "method" not in obj:
            return None, BadMessage(None, 0, "a response without an id (ignored)"), rest
        return None, BadMessage(None, INVALID_REQUEST, "invalid request: the id must be an integer or a string"), rest
    answer_id = msg_id if has_id else None
    if obj.get("jsonrpc") != "2.0":
        return None, BadMessage(answer_id, INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"'), rest
    if "method" in obj:
        if not isinstance(obj["method"], str):
            return None, BadMessage(answer_id, INVALID_REQUEST, "invalid request: the method must be a string"), rest
        if "params" in obj and not isinstance(obj["params"], (dict, list)) and obj["params"] is not None:
            return None, BadMessage(answer_id, INVALID_REQUEST,
                                    "invalid request: params must be an object or an array"), rest
    elif not has_id or ("result" not in obj and "error" not in obj):
        return None, BadMessage(answer_id, INVALID_REQUEST, "invalid request: neither a request, a notification "
                                                            "nor a response"), rest
    return obj, None, rest


def error_response(msg_id: Optional[Union[int, str]], code: int, message: str) -> bytes:
    body = json.dumps({"jsonrpc": "2.0", "id": msg_id if valid_id(msg_id) else None,
                       "error": {"code": int(code), "message": message}}).encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


# ------------------------------------------------------------------------------------------------ connection


Gate = Callable[[dict], Optional[BadMessage]]


class Connection:
    """Frames and envelopes of one client connection, handed to pygls' protocol (see the module docstring).

    `dispatch(message)` gets each valid envelope (a dict); `send(bytes)` writes an error frame to this client.
    A `gate` may refuse a message (authentication): it returns the error to answer with, and the connection is
    then closed by the caller (`refused` is set)."""

    def __init__(self, dispatch: Callable[[dict], None], send: Callable[[bytes], None], *,
                 gate: Optional[Gate] = None, max_length: int = MAX_CONTENT_LENGTH):
        self.frames = FrameReader(max_length)
        self.dispatch = dispatch
        self.send = send
        self.gate = gate
        self.refused = False
        self.errors = 0
        self._body_failed = False  # the last body did not parse: the line after it is its own tail

    async def feed(self, data: bytes) -> None:
        """Handle every message `data` completes, in order. After each one the event loop runs once, so that a
        handler it started as a task (pygls runs coroutine handlers as tasks) begins before the next message is
        handled, as when messages arrive one read at a time."""
        self.frames.feed(data)
        while not self.refused and (item := self.frames.next()) is not None:
            await asyncio.sleep(0)
            if isinstance(item, FrameError):
                self.errors += 1
                log.warning("bad frame: %s; skipped to the next Content-Length header", item.reason)
                if not self._body_failed:  # (the tail of a body already answered gets no second error)
                    self.send(error_response(None, PARSE_ERROR, f"parse error: {item.reason}"))
                self._body_failed = False
                continue
            msg, bad, rest = parse_body(item.body)
            self._body_failed = bad is not None and bad.code == PARSE_ERROR
            if rest:
                self.frames.unread(rest)
            if bad is not None:
                self._answer_bad(bad)
                continue
            if self.gate is not None:
                refusal = self.gate(msg)
                if refusal is not None:
                    self._answer_bad(refusal)
                    self.refused = True
                    return
            try:
                self.dispatch(msg)
            except (SystemExit, KeyboardInterrupt):
                raise
            except Exception as e:  # a handler bug must not cost the connection; a request still gets an answer
                log.exception("handling %s failed", msg.get("method", "a response"))
                if "method" in msg and valid_id(msg.get("id")):
                    self.send(error_response(msg["id"], INTERNAL_ERROR,
                                             f"internal error: {type(e).__name__} (details in the server log)"))

    def _answer_bad(self, bad: BadMessage) -> None:
        if bad.code == 0:
            log.debug("%s", bad.message)
            return
        self.errors += 1
        log.warning("bad message (id %r): %s", bad.id, bad.message)
        self.send(error_response(bad.id, bad.code, bad.message))


# ------------------------------------------------------------------------------------------------ transports


class StdoutWriter:
    """pygls' writer interface over a binary stream (stdout)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, data: bytes) -> None:
        self._stream.write(data)
        self._stream.flush()

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError:
            pass


async def _pump(read: Callable[[], Awaitable[bytes]], conn: Connection, stop: Callable[[], bool]) -> None:
    while not stop() and not conn.refused:
        data = await read()
        if not data:
            return
        await conn.feed(data)


def serve_stdio(protocol, stdin_fd: int, stdout, stop: Callable[[], bool]) -> None:
    """Run `protocol` (pygls) on stdin/stdout until end of input or `exit` (SystemExit propagates)."""
    writer = StdoutWriter(stdout)
    protocol.set_writer(writer)
    reader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="intarsia-stdin")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = Connection(protocol_dispatch(protocol), writer.write)
        await _pump(lambda: loop.run_in_executor(reader, os.read, stdin_fd, READ_CHUNK), conn, stop)

    try:
        asyncio.run(main())
    finally:
        reader.shutdown(wait=False, cancel_futures=True)


def protocol_dispatch(protocol) -> Callable[[dict], None]:
    """Hand one envelope to pygls: structure it (top level only, params by their LSP type), then handle it."""

    def dispatch(message: dict) -> None:
        protocol.handle_message(protocol.structure_message(message))

    return dispatch


def token_gate(token: str, on_ok: Callable[[], None]) -> Gate:
    """The first message must be `initialize` with `initializationOptions.token` equal to `token` (also accepted
    inside the "intarsia" section); the token is removed before the server sees the options."""
    state = {"ok": False}

    def gate(msg: dict) -> Optional[BadMessage]:
        if state["ok"]:
            return None
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        opts = params.get("initializationOptions")
        given = None
        if isinstance(opts, dict):
            given = opts.pop("token", None)
            section = opts.get("intarsia")
            if isinstance(section, dict) and given is None:
                given = section.pop("token", None)
        if msg.get("method") != "initialize" or not isinstance(given, str) or \
                not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode()):
            log.warning("refused a TCP client: its first message was not an initialize with this start's token")
            return BadMessage(msg.get("id") if valid_id(msg.get("id")) else None, INVALID_REQUEST,
                              "authentication required: send this server's token in initializationOptions.token")
        state["ok"] = True
        on_ok()
        return None

    return gate


def token_file(port: int) -> Path:
    """Where `intarsia serve --tcp` writes its token: a 0600 file in a 0700 folder of the user's runtime dir."""
    base = os.environ.get("XDG_RUNTIME_DIR") or ""
    root = Path(base) / "intarsia" if base and os.path.isdir(base) else Path.home() / ".cache" / "intarsia" / "run"
    return root / f"serve-{port}.token"


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by this user only (folder 0700, file 0600, replaced atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


class _Slot:
    """One client at a time: the first that authenticates keeps the server until it leaves."""

    def __init__(self) -> None:
        self.busy = False
        self.done = asyncio.Event()


async def _serve_socket(protocol, start: Callable[..., Awaitable[asyncio.AbstractServer]],
                        token: Optional[str], stop: Callable[[], bool], announce: Callable[[Any], None]) -> None:
    slot = _Slot()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or writer.get_extra_info("sockname")
        if slot.busy:
            log.warning("refused a second client (%s): one client at a time", peer)
            writer.close()
            return
        slot.busy = True
        authed = asyncio.Event()

        def authenticated() -> None:
            protocol.set_writer(writer)
            authed.set()

        conn = Connection(protocol_dispatch(protocol), writer.write,
                          gate=token_gate(token, authenticated) if token is not None else None)
        if token is None:
            authenticated()

        async def read() -> bytes:
            if authed.is_set():
                return await reader.read(READ_CHUNK)
            try:
                return await asyncio.wait_for(reader.read(READ_CHUNK), AUTH_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.warning("closed a client (%s) that did not authenticate within %.0f s", peer, AUTH_TIMEOUT_S)
                return b""

        try:
            await _pump(read, conn, stop)
        except ConnectionError as e:
            log.info("client %s: %s", peer, e)
        finally:
            if conn.refused or not authed.is_set():
                try:
                    await writer.drain()
                except ConnectionError:
                    pass
                writer.close()
                slot.busy = False
            else:
                log.info("the client left")
                slot.done.set()

    server = await start(on_client)
    announce(server)
    async with server:
        await slot.done.wait()


def serve_tcp(protocol, host: str, port: int, token: str, stop: Callable[[], bool],
              announce: Callable[[int], None]) -> None:
    """Listen on host:port (callers pass 127.0.0.1); serve the first client that authenticates, until it leaves."""

    def announced(server: asyncio.AbstractServer) -> None:
        announce(server.sockets[0].getsockname()[1])

    asyncio.run(_serve_socket(protocol, lambda cb: asyncio.start_server(cb, host, port), token, stop, announced))


def serve_unix(protocol, path: Path, stop: Callable[[], bool], announce: Callable[[Path], None]) -> None:
    """Listen on a Unix socket readable and writable by this user only (0600; its folder is not changed)."""
    path = Path(path)
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()  # a socket left by an earlier run
    except FileNotFoundError:
        pass

    async def start(cb):
        old = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(cb, str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        return server

    try:
        asyncio.run(_serve_socket(protocol, start, None, stop, lambda server: announce(path)))
    finally:
        try:
            path.unlink()
        except OSError:
            pass


def new_token() -> str:
    return secrets.token_urlsafe(24)


__all__ = ["MAX_CONTENT_LENGTH", "Frame", "FrameError", "FrameReader", "BadMessage", "parse_body", "recover_id",
           "error_response", "Connection", "serve_stdio", "serve_tcp", "serve_unix", "token_gate", "token_file",
           "write_private", "new_token", "PARSE_ERROR", "INVALID_REQUEST", "INTERNAL_ERROR"]
