"""pygls adapted to a server that must never go deaf or leak: the protocol and the language server classes.

- Params that do not structure get InvalidParams with the request's id (pygls would answer nothing useful).
- Every request after `shutdown` gets InvalidRequest, as the LSP says; notifications are dropped.
- pygls keeps a future per handled message and forgets it only when a response is sent: notifications would
  leave one each (~2 kB a keystroke). Done futures are forgotten.
- Error responses carry no Python traceback (pygls puts one in `data`): it goes to the log.
- Document sync is the session's (`Session.did_open/did_change/did_close`), not pygls' workspace, so a change for
  a document never opened, or a range past its end, is logged and ignored.

Framing and envelopes are checked before a message gets here (`transport`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Optional

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from .session import Session
from .settings import Settings

log = logging.getLogger(__name__)

SERVER_NAME = "intarsia"
SERVER_VERSION = "0.1.0"

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
            is_request = method is not None or isinstance(message, _InvalidRequest)
            if getattr(message, "id", None) is not None and is_request:
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


__all__ = ["IntarsiaProtocol", "IntarsiaServer", "LspUI", "SERVER_NAME", "SERVER_VERSION"]
