"""`intarsia serve`: the language server (pygls 2, lsprotocol 2025). Handlers only translate between LSP
messages and `worker.Session`, which does the work.

Features: `textDocument/inlineCompletion` (LSP 3.18), a `textDocument/completion` fallback (one item carrying
the whole suggestion, when invoked or on the configured trigger characters), incremental text sync with
positions in the negotiated encoding (UTF-16 unless the client prefers UTF-8/32), `workspace/executeCommand`
(intarsia.generateFunction, intarsia.accept, intarsia.acceptPartial, intarsia.status, intarsia.reloadModel),
settings from `initializationOptions` and `workspace/didChangeConfiguration` (section "intarsia"), model
loading reported with `$/progress`.

Robustness: documents are synchronised by the session (not pygls' workspace), so a change for a document that
was never opened, or a range past its end, is logged and ignored. Malformed JSON gets a JSON-RPC parse error
(id null), a message that is not a JSON-RPC object an invalid-request error, a request with malformed
params an invalid-params error with its id; none of them stop the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Optional

from lsprotocol import types
from pygls.capabilities import ServerCapabilitiesBuilder
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcInvalidRequest
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from . import transport
from .settings import Settings, parse_settings, unwrap, without_workspace_unsafe
from .worker import Session, Suggestion, uri_to_path

log = logging.getLogger(__name__)

SERVER_NAME = "intarsia"
SERVER_VERSION = "0.1.0"

CMD_GENERATE_FUNCTION = "intarsia.generateFunction"
CMD_ACCEPT = "intarsia.accept"
CMD_ACCEPT_PARTIAL = "intarsia.acceptPartial"
CMD_STATUS = "intarsia.status"
CMD_RELOAD = "intarsia.reloadModel"

_LEVELS = {"error": types.MessageType.Error, "warning": types.MessageType.Warning, "info": types.MessageType.Info,
           "log": types.MessageType.Log}


class _InvalidRequest:
    """A request whose params could not be structured: answered with an error, never dispatched."""

    def __init__(self, msg_id: Any, code: int, message: str):
        self.id = msg_id
        self.code = code
        self.message = message


def _why(exc: JsonRpcException) -> str:
    """A short description of what was wrong with a message's structure."""
    cause = exc.__cause__
    if cause is not None:
        try:
            from cattrs import transform_error

            return "; ".join(transform_error(cause, path="$"))[:500]
        except Exception:
            return str(cause)[:500]
    return exc.message or str(exc)


class IntarsiaProtocol(LanguageServerProtocol):
    """pygls' protocol with robust message handling and document sync delegated to the session."""

    _server: "IntarsiaServer"

    def structure_message(self, data: dict):
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if isinstance(data, dict) and "id" in data and "method" in data:
                return _InvalidRequest(data["id"], exc.code,
                                       f"invalid params for {data.get('method')!r}: {_why(exc)}")
            raise

    def handle_message(self, message):
        method = getattr(message, "method", None)
        if self._shutdown and method != types.EXIT:
            # The LSP: every request after shutdown gets InvalidRequest; notifications are dropped.
            if getattr(message, "id", None) is not None and (method is not None or isinstance(message, _InvalidRequest)):
                self._send_raw_error(message.id, types.ErrorCodes.InvalidRequest.value,
                                     f"the server is shutting down: {method or 'the request'} is not handled after "
                                     "shutdown")
            else:
                log.debug("after shutdown: %s ignored", method or "a response")
            return
        if isinstance(message, _InvalidRequest):
            log.warning("request %r: %s", message.id, message.message)
            self._send_raw_error(message.id, message.code, message.message)
            return
        super().handle_message(message)

    def _execute_handler(self, msg_id, handler, callback, args=None, kwargs=None):
        """pygls keeps a future per handled message until a response is sent; notifications never get one, so
        each notification's future would stay forever (a leak of ~2 kB per keystroke). Forget a future once it
        is done (a request's result has been sent by then)."""
        super()._execute_handler(msg_id, handler, callback, args, kwargs)
        future = self._request_futures.get(msg_id)
        if future is not None:
            def forget(f, msg_id=msg_id) -> None:
                if self._request_futures.get(msg_id) is f:
                    del self._request_futures[msg_id]

            future.add_done_callback(forget)

    def _send_response(self, msg_id, result=None, error=None):
        """Errors go to the client without Python tracebacks (those stay in the log)."""
        data = getattr(error, "data", None)
        if isinstance(data, dict) and "traceback" in data:
            log.error("request %r failed: %s\n%s", msg_id, error.message, "".join(data["traceback"]))
            error = types.ResponseError(code=error.code, message=f"{error.message} (details in the server log)")
        super()._send_response(msg_id, result, error)

    def _send_raw_error(self, msg_id: Any, code: int, message: str) -> None:
        if not isinstance(msg_id, (int, str)) or isinstance(msg_id, bool):
            msg_id = None
        self._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": int(code), "message": message}})

    # Document sync: the session keeps the documents (pygls' workspace is not used).

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield handler, (params,), None


class IntarsiaServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__(SERVER_NAME, SERVER_VERSION, protocol_cls=IntarsiaProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.session: Optional[Session] = None
        self.ui = LspUI(self)
        self.init_settings = Settings()
        self.init_warnings: list[str] = []

    def report_server_error(self, error: Exception, source) -> None:
        if isinstance(error, (ValueError, UnicodeDecodeError)) and not isinstance(error, JsonRpcException):
            # json.loads failed (JSONDecodeError is a ValueError): JSON-RPC's parse error, id null.
            log.warning("malformed message: %s", error)
            self.protocol._send_raw_error(None, types.ErrorCodes.ParseError.value, f"parse error: {error}")
            return
        name = getattr(source, "__name__", str(source))
        log.error("server error (%s): %s", name, error)
        if name != "FeatureRequestError":  # requests already carry their error in the response
            try:
                self.ui.log_message("error", f"Intarsia: internal error ({name}): {error}")
            except Exception:
                pass

    # -- client capabilities

    def client_supports(self, dotted: str) -> bool:
        obj: Any = self.protocol.client_capabilities if hasattr(self.protocol, "client_capabilities") else None
        for part in dotted.split("."):
            if obj is None:
                return False
            obj = getattr(obj, part, None)
        return bool(obj)


class LspUI:
    """`worker.UI` over LSP: window/showMessage, window/logMessage, $/progress."""

    def __init__(self, server: IntarsiaServer):
        self.server = server

    def show_message(self, level: str, message: str) -> None:
        self.server.window_show_message(types.ShowMessageParams(type=_LEVELS.get(level, types.MessageType.Info),
                                                                message=message))

    def log_message(self, level: str, message: str) -> None:
        self.server.window_log_message(types.LogMessageParams(type=_LEVELS.get(level, types.MessageType.Log),
                                                              message=message))

    async def progress_begin(self, title: str, message: str) -> Optional[str]:
        if not self.server.client_supports("window.work_done_progress"):
            return None
        token = f"intarsia-{uuid.uuid4().hex[:8]}"
        try:
            await asyncio.wait_for(self.server.work_done_progress.create_async(token), timeout=5)
        except Exception as e:  # the client refused or did not answer: no progress, loading goes on
            log.info("no progress reporting: %s", e)
            return None
        self.server.work_done_progress.begin(
            token, types.WorkDoneProgressBegin(title=title, message=message, percentage=0, cancellable=False))
        return token

    def progress_report(self, token: Optional[str], message: str, percentage: Optional[int]) -> None:
        if token is None:
            return
        self.server.work_done_progress.report(
            token, types.WorkDoneProgressReport(message=message,
                                                percentage=None if percentage is None else int(percentage)))

    def progress_end(self, token: Optional[str], message: str) -> None:
        if token is None:
            return
        self.server.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))


def _range(start: tuple[int, int], end: tuple[int, int]) -> types.Range:
    return types.Range(start=types.Position(line=start[0], character=start[1]),
                       end=types.Position(line=end[0], character=end[1]))


def make_server() -> IntarsiaServer:
    ls = IntarsiaServer()
    completion_options = types.CompletionOptions(trigger_characters=list(Settings().trigger_characters),
                                                 resolve_provider=False)

    def session_of(ls: IntarsiaServer) -> Optional[Session]:
        return ls.session

    # ---- lifecycle ----------------------------------------------------------------------------------------

    @ls.feature(types.INITIALIZE)
    def initialize(ls: IntarsiaServer, params: types.InitializeParams) -> None:
        if ls.session is not None:
            raise JsonRpcInvalidRequest("the server is already initialized")
        chosen = ServerCapabilitiesBuilder.choose_position_encoding(params.capabilities)
        encoding = str(getattr(chosen, "value", chosen))
        root = None
        if params.workspace_folders:
            root = uri_to_path(params.workspace_folders[0].uri)
        elif params.root_uri:
            root = uri_to_path(params.root_uri)
        elif params.root_path:
            root = params.root_path
        settings, warnings = parse_settings(params.initialization_options, Settings())
        ls.init_warnings = warnings
        ls.session = Session(settings=settings, root=root, encoding=encoding, ui=ls.ui)
        completion_options.trigger_characters = list(settings.trigger_characters)
        client = params.client_info.name if params.client_info else "unknown client"
        log.info("initialize from %s: root %s, position encoding %s, engine %s", client, root, encoding,
                 settings.engine)

    @ls.feature(types.INITIALIZED)
    async def initialized(ls: IntarsiaServer, params: types.InitializedParams) -> None:
        s = session_of(ls)
        if s is None:
            return
        warnings = list(ls.init_warnings)
        pulled = await _pull_configuration(ls)
        if pulled is not None:
            warnings += s.update_settings(pulled, reload=False)
        _warn(ls, warnings)
        s.start()

    @ls.feature(types.SHUTDOWN)
    async def shutdown(ls: IntarsiaServer, params: None) -> None:
        if ls.session is not None:
            await ls.session.shutdown()

    # ---- documents ----------------------------------------------------------------------------------------

    @ls.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: IntarsiaServer, params: types.DidOpenTextDocumentParams) -> None:
        s = session_of(ls)
        if s is None:
            return
        d = params.text_document
        s.did_open(d.uri, d.language_id, d.version, d.text)

    @ls.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: IntarsiaServer, params: types.DidChangeTextDocumentParams) -> None:
        s = session_of(ls)
        if s is None:
            return
        changes = []
        for c in params.content_changes:
            if isinstance(c, types.TextDocumentContentChangePartial):
                r = c.range
                changes.append(((r.start.line, r.start.character, r.end.line, r.end.character), c.text))
            else:
                changes.append((None, c.text))
        s.did_change(params.text_document.uri, params.text_document.version, changes)

    @ls.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: IntarsiaServer, params: types.DidCloseTextDocumentParams) -> None:
        s = session_of(ls)
        if s is not None:
            s.did_close(params.text_document.uri)

    @ls.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))
    def did_save(ls: IntarsiaServer, params: types.DidSaveTextDocumentParams) -> None:
        s = session_of(ls)
        if s is not None:
            s.did_save(params.text_document.uri, params.text)

    @ls.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(ls: IntarsiaServer, params: types.DidChangeConfigurationParams) -> None:
        s = session_of(ls)
        if s is None:
            return
        raw = params.settings
        section = unwrap(raw) if isinstance(raw, dict) and "intarsia" in raw else None
        if section is None:
            # Pull model: the notification only says that something changed.
            section = await _pull_configuration(ls)
        if section is None and isinstance(raw, dict) and raw:
            section = raw
        if section is None:
            return
        _warn(ls, s.update_settings(section))

    # ---- completions --------------------------------------------------------------------------------------

    @ls.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: IntarsiaServer, params: types.InlineCompletionParams
                                ) -> types.InlineCompletionList:
        s = session_of(ls)
        empty = types.InlineCompletionList(items=[])
        if s is None:
            return empty
        ctx = params.context
        if ctx is not None and ctx.selected_completion_info is not None:
            return empty  # the completion popup is open: its item takes precedence
        invoked = ctx is not None and ctx.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        sug = await s.complete(params.text_document.uri, params.position.line, params.position.character,
                               invoked=invoked)
        if sug is None:
            return empty
        pos = s.documents.get(sug.uri).position_at(sug.offset, s.encoding)
        item = types.InlineCompletionItem(insert_text=sug.text, range=_range(pos, pos),
                                          command=_accept_command(sug))
        return types.InlineCompletionList(items=[item])

    @ls.feature(types.TEXT_DOCUMENT_COMPLETION, completion_options)
    async def completion(ls: IntarsiaServer, params: types.CompletionParams) -> types.CompletionList:
        s = session_of(ls)
        empty = types.CompletionList(is_incomplete=False, items=[])
        if s is None:
            return empty
        ctx = params.context
        # Invoked (or no context): an explicit request. A trigger character: only the configured ones. A
        # re-trigger of our incomplete list while typing: automatic (mostly answered from the cache).
        invoked = ctx is None or ctx.trigger_kind == types.CompletionTriggerKind.Invoked
        if ctx is not None and ctx.trigger_kind == types.CompletionTriggerKind.TriggerCharacter \
                and ctx.trigger_character not in s.settings.trigger_characters:
            return empty
        sug = await s.complete(params.text_document.uri, params.position.line, params.position.character,
                               invoked=invoked)
        if sug is None:
            return empty
        doc = s.documents.get(sug.uri)
        text = doc.text
        ws = sug.offset
        while ws > 0 and (text[ws - 1].isalnum() or text[ws - 1] == "_"):
            ws -= 1
        word = text[ws:sug.offset]
        first = sug.text.split("\n", 1)[0].rstrip("\r")
        label = (word + first).strip() or sug.text.strip().splitlines()[0]
        if len(label) > 60:
            label = label[:59] + "…"
        elif "\n" in sug.text.rstrip("\n"):
            label += " …"
        item = types.CompletionItem(
            label=label,
            kind=types.CompletionItemKind.Text,
            detail="Intarsia",
            documentation=types.MarkupContent(kind=types.MarkupKind.PlainText, value=word + sug.text),
            insert_text_format=types.InsertTextFormat.PlainText,
            filter_text=word + first,
            sort_text="0",
            text_edit=types.TextEdit(range=_range(doc.position_at(ws, s.encoding),
                                                  doc.position_at(sug.offset, s.encoding)),
                                     new_text=word + sug.text),
            command=_accept_command(sug),
        )
        return types.CompletionList(is_incomplete=True, items=[item])

    # ---- commands -----------------------------------------------------------------------------------------

    @ls.command(CMD_STATUS)
    def status(ls: IntarsiaServer, *args: Any) -> dict:
        s = session_of(ls)
        if s is None:
            return {"state": "uninitialized"}
        uri = args[0].get("uri") if args and isinstance(args[0], dict) else None
        out = s.status(uri if isinstance(uri, str) else None)
        out["open_requests"] = len(ls.protocol._request_futures)  # requests in flight (pygls' book-keeping)
        return out

    @ls.command(CMD_RELOAD)
    def reload_model(ls: IntarsiaServer, *args: Any) -> dict:
        s = session_of(ls)
        if s is None:
            raise JsonRpcInvalidParams("the server is not initialized")
        s.reload()
        return {"state": s.engine_state}

    @ls.command(CMD_ACCEPT)
    def accept(ls: IntarsiaServer, *args: Any) -> dict:
        return _do_accept(ls, args, partial=False)

    @ls.command(CMD_ACCEPT_PARTIAL)
    def accept_partial(ls: IntarsiaServer, *args: Any) -> dict:
        return _do_accept(ls, args, partial=True)

    @ls.command(CMD_GENERATE_FUNCTION)
    async def generate_function(ls: IntarsiaServer, *args: Any) -> dict:
        s = session_of(ls)
        if s is None:
            raise JsonRpcInvalidParams("the server is not initialized")
        uri, line, character = _location_args(args)
        res = await s.generate_function(uri, line, character)
        if not res.ok:
            return {"applied": False, "reason": res.reason, "function": res.name or None}
        edit = types.TextEdit(range=_range(res.start, res.end), new_text=res.new_text)
        if ls.client_supports("workspace.workspace_edit.document_changes"):
            wedit = types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(
                text_document=types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=res.version),
                edits=[edit])])
        else:
            wedit = types.WorkspaceEdit(changes={uri: [edit]})
        result = {"applied": False, "reason": res.reason, "function": res.name,
                  "edit": {"range": {"start": {"line": res.start[0], "character": res.start[1]},
                                     "end": {"line": res.end[0], "character": res.end[1]}},
                           "newText": res.new_text, "version": res.version}}
        if not ls.client_supports("workspace.apply_edit"):
            result["reason"] = "the client cannot apply workspace edits; the edit is in this result"
            return result
        try:
            applied = await asyncio.wait_for(ls.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(
                edit=wedit, label=f"Intarsia: body of {res.name}")), timeout=30)
        except Exception as e:
            result["reason"] = f"workspace/applyEdit failed: {e}"
            return result
        result["applied"] = bool(applied and applied.applied)
        if applied is not None and not applied.applied:
            result["reason"] = f"the client did not apply the edit: {applied.failure_reason or 'no reason given'}"
        return result

    return ls


def _accept_command(sug: Suggestion) -> types.Command:
    return types.Command(title="Intarsia: suggestion accepted", command=CMD_ACCEPT, arguments=[{"id": sug.id}])


def _do_accept(ls: IntarsiaServer, args: tuple, *, partial: bool) -> dict:
    s = ls.session
    if s is None:
        raise JsonRpcInvalidParams("the server is not initialized")
    sid: Any = None
    n: Any = None
    if len(args) == 1 and isinstance(args[0], dict):
        sid = args[0].get("id")
        n = args[0].get("acceptedLength", args[0].get("accepted_length"))
    elif args:
        sid = args[0]
        n = args[1] if len(args) > 1 else None
    if not isinstance(sid, str) or (n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0)):
        raise JsonRpcInvalidParams(f"expected [{{\"id\": str, \"acceptedLength\"?: int}}], got {list(args)!r}")
    if partial and n is None:
        raise JsonRpcInvalidParams("intarsia.acceptPartial needs acceptedLength")
    return {"recorded": s.accept(sid, n)}


def _location_args(args: tuple) -> tuple[str, int, int]:
    """[{"uri", "position": {"line", "character"}}] or [uri, {"line", "character"}] or [uri, line, character]."""
    try:
        if len(args) == 1 and isinstance(args[0], dict):
            a = args[0]
            uri = a.get("uri") or a.get("textDocument", {}).get("uri")
            pos = a["position"]
            line, ch = pos["line"], pos["character"]
        elif len(args) == 2:
            uri, pos = args
            line, ch = pos["line"], pos["character"]
        else:
            uri, line, ch = args
    except (KeyError, TypeError, ValueError, AttributeError):
        raise JsonRpcInvalidParams(f"expected [{{\"uri\": str, \"position\": {{\"line\", \"character\"}}}}], "
                                   f"got {list(args)!r}") from None
    if not isinstance(uri, str) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                           for v in (line, ch)):
        raise JsonRpcInvalidParams(f"invalid location {list(args)!r}")
    return uri, line, ch


async def _pull_configuration(ls: IntarsiaServer) -> Optional[Any]:
    """The client's "intarsia" section via workspace/configuration, when the client has that request, without
    `settings.WORKSPACE_UNSAFE` (many clients answer it from files a repository can ship)."""
    if not ls.client_supports("workspace.configuration"):
        return None
    try:
        res = await asyncio.wait_for(ls.workspace_configuration_async(types.ConfigurationParams(
            items=[types.ConfigurationItem(section="intarsia")])), timeout=3)
    except Exception as e:
        log.info("workspace/configuration failed: %s", e)
        return None
    if isinstance(res, (list, tuple)) and res and isinstance(res[0], dict) and res[0]:
        section, dropped = without_workspace_unsafe(res[0])
        if dropped:
            log.info("workspace/configuration: %s not taken from it (settings that point at code, files or "
                     "endpoints come only from initializationOptions and didChangeConfiguration)", ", ".join(dropped))
        return section or None
    return None


def _warn(ls: IntarsiaServer, warnings: list[str]) -> None:
    if not warnings:
        return
    for w in warnings:
        ls.ui.log_message("warning", f"Intarsia settings: {w}")
    ls.ui.show_message("warning", "Intarsia settings: " + "; ".join(warnings))


# ------------------------------------------------------------------------------------------------ entry point


def setup_logging(verbose: int = 0, log_file: Optional[str] = None) -> None:
    """Logs go to stderr (or a file), never stdout: stdout is the LSP channel."""
    handler: logging.Handler
    if log_file:
        from logging.handlers import RotatingFileHandler

        # Editors keep one log per user for months: rotate at 5 MB, keep three old files.
        handler = RotatingFileHandler(log_file, maxBytes=5 << 20, backupCount=3, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("intarsia").setLevel(logging.DEBUG if verbose >= 1 else logging.INFO)
    logging.getLogger("pygls").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def serve(*, tcp: bool = False, port: int = 2087, socket_path: Optional[str] = None, verbose: int = 0,
          log_file: Optional[str] = None) -> int:
    """Run the server on stdio (default), on TCP bound to 127.0.0.1 (a per-start token is required), or on a
    Unix socket with mode 0600; one client, until it leaves."""
    setup_logging(verbose, log_file)
    ls = make_server()
    ls._stop_event = threading.Event()
    stopped = ls._stop_event.is_set
    try:
        if socket_path:
            def announce_path(path) -> None:
                log.info("intarsia serve: listening on the Unix socket %s (mode 0600)", path)
                print(f"intarsia serve: listening on {path} (readable by you only)", file=sys.stderr, flush=True)

            transport.serve_unix(ls.protocol, Path(socket_path).expanduser(), stopped, announce_path)
        elif tcp:
            token = os.environ.get("INTARSIA_TOKEN") or transport.new_token()

            def announce_port(bound: int) -> None:
                where = transport.token_file(bound)
                try:
                    transport.write_private(where, token + "\n")
                    kept = f", also in {where}"
                except OSError as e:
                    kept = f" (cannot write {where}: {e.strerror})"
                print(f"intarsia serve: listening on 127.0.0.1:{bound}; a client must send "
                      f"initializationOptions.token = {token}{kept}", file=sys.stderr, flush=True)
                log.info("intarsia serve: listening on 127.0.0.1:%d", bound)

            transport.serve_tcp(ls.protocol, "127.0.0.1", port, token, stopped, announce_port)
        else:
            # Keep stray writes to stdout (print, native libraries) off the LSP channel: the protocol gets a
            # private duplicate of fd 1, and fd 1 itself now points at stderr.
            lsp_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
            os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
            sys.stdout = sys.stderr
            transport.serve_stdio(ls.protocol, sys.stdin.fileno(), lsp_out, stopped)
    except SystemExit:  # the `exit` notification
        pass
    except BrokenPipeError:
        log.error("the connection to the client is lost: shutting down")
    except KeyboardInterrupt:
        pass
    finally:
        ls.shutdown()
    return _exit_code(ls)


def _exit_code(ls: IntarsiaServer) -> int:
    """0 when the client asked for shutdown before leaving (the LSP's rule for `exit`), else 1."""
    return 0 if getattr(ls.protocol, "_shutdown", False) else 1


__all__ = ["make_server", "serve", "IntarsiaServer", "IntarsiaProtocol", "setup_logging"]
