"""`intarsia serve`: the language server's handlers (pygls 2, lsprotocol 2025).

Handlers only translate: LSP params go to `Session` methods, and what the session returns goes back through
`convert` (every wire shape is there). Nothing here knows how a completion is made.

Features: `textDocument/inlineCompletion` (LSP 3.18), a `textDocument/completion` fallback (one item carrying the
whole suggestion, when invoked or on the configured trigger characters), incremental text sync with positions in
the negotiated encoding (UTF-16 unless the client prefers UTF-8/32), `workspace/executeCommand`
(intarsia.generateFunction, intarsia.accept, intarsia.acceptPartial, intarsia.status, intarsia.reloadModel),
settings from `initializationOptions` and `workspace/didChangeConfiguration` (section "intarsia"; a
`workspace/configuration` answer is read without the settings that point at code, files or endpoints), model
loading reported with `$/progress`. The protocol's robustness is in `protocol.py`, the wire's in `transport.py`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from lsprotocol import types
from pygls.capabilities import ServerCapabilitiesBuilder
from pygls.exceptions import JsonRpcInvalidParams, JsonRpcInvalidRequest

from . import convert, transport
from .convert import CMD_ACCEPT, CMD_ACCEPT_PARTIAL, CMD_GENERATE_FUNCTION, CMD_RELOAD, CMD_STATUS
from .protocol import IntarsiaServer
from .session import Session, uri_to_path
from .settings import Settings, parse_settings, unwrap, without_workspace_unsafe

log = logging.getLogger(__name__)


def make_server() -> IntarsiaServer:
    ls = IntarsiaServer()
    completion_options = types.CompletionOptions(trigger_characters=list(Settings().trigger_characters),
                                                 resolve_provider=False)

    def session_of(ls: IntarsiaServer) -> Session:
        if ls.session is None:
            raise JsonRpcInvalidParams("the server is not initialized")
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
        if ls.session is None:
            return
        ls.session.host.starting()
        warnings = list(ls.init_warnings)
        pulled = await _pull_configuration(ls)
        if pulled is not None:
            warnings += ls.session.update_settings(pulled, reload=False)
        _warn(ls, warnings)
        ls.session.start()

    @ls.feature(types.SHUTDOWN)
    async def shutdown(ls: IntarsiaServer, params: None) -> None:
        if ls.session is not None:
            await ls.session.shutdown()

    # ---- documents (notifications before initialize are dropped) ----------------------------------------------

    @ls.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: IntarsiaServer, params: types.DidOpenTextDocumentParams) -> None:
        if ls.session is not None:
            d = params.text_document
            ls.session.did_open(d.uri, d.language_id, d.version, d.text)

    @ls.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: IntarsiaServer, params: types.DidChangeTextDocumentParams) -> None:
        if ls.session is not None:
            ls.session.did_change(params.text_document.uri, params.text_document.version,
                                  convert.content_changes(params))

    @ls.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: IntarsiaServer, params: types.DidCloseTextDocumentParams) -> None:
        if ls.session is not None:
            ls.session.did_close(params.text_document.uri)

    @ls.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))
    def did_save(ls: IntarsiaServer, params: types.DidSaveTextDocumentParams) -> None:
        if ls.session is not None:
            ls.session.did_save(params.text_document.uri, params.text)

    @ls.feature(convert.DID_MOVE_CURSOR)
    def did_move_cursor(ls: IntarsiaServer, params: Any) -> None:
        found = convert.cursor_params(params)
        if ls.session is not None and found is not None:
            ls.session.did_move_cursor(*found)

    @ls.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(ls: IntarsiaServer, params: types.DidChangeConfigurationParams) -> None:
        if ls.session is None:
            return
        raw = params.settings
        section = unwrap(raw) if isinstance(raw, dict) and "intarsia" in raw else None
        if section is None:
            # Pull model: the notification only says that something changed.
            section = await _pull_configuration(ls)
        if section is None and isinstance(raw, dict) and raw:
            section = raw
        if section is not None:
            _warn(ls, ls.session.update_settings(section))

    # ---- completions (requests before initialize get an empty answer) -----------------------------------------

    @ls.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: IntarsiaServer, params: types.InlineCompletionParams
                                ) -> types.InlineCompletionList:
        ctx = params.context
        if ls.session is None or (ctx is not None and ctx.selected_completion_info is not None):
            return convert.inline_list(None)  # (the completion popup is open: its item takes precedence)
        invoked = ctx is not None and ctx.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        return convert.inline_list(await ls.session.complete(
            params.text_document.uri, params.position.line, params.position.character, invoked=invoked))

    @ls.feature(types.TEXT_DOCUMENT_COMPLETION, completion_options)
    async def completion(ls: IntarsiaServer, params: types.CompletionParams) -> types.CompletionList:
        s, ctx = ls.session, params.context
        # Invoked (or no context): an explicit request. A trigger character: only the configured ones. A
        # re-trigger of our incomplete list while typing: automatic (mostly answered from the cache).
        if s is None or (ctx is not None and ctx.trigger_kind == types.CompletionTriggerKind.TriggerCharacter
                         and ctx.trigger_character not in s.settings.trigger_characters):
            return convert.completion_list(None)
        invoked = ctx is None or ctx.trigger_kind == types.CompletionTriggerKind.Invoked
        return convert.completion_list(await s.complete(
            params.text_document.uri, params.position.line, params.position.character, invoked=invoked))

    # ---- commands -----------------------------------------------------------------------------------------

    @ls.command(CMD_STATUS)
    def status(ls: IntarsiaServer, *args: Any) -> dict:
        if ls.session is None:
            return {"state": "uninitialized"}
        out = ls.session.status(convert.status_uri(args))
        out["open_requests"] = len(ls.protocol._request_futures)  # requests in flight (pygls' book-keeping)
        return out

    @ls.command(CMD_RELOAD)
    def reload_model(ls: IntarsiaServer, *args: Any) -> dict:
        s = session_of(ls)
        s.reload()
        return {"state": s.host.state}

    @ls.command(CMD_ACCEPT)
    def accept(ls: IntarsiaServer, *args: Any) -> dict:
        return {"recorded": session_of(ls).accept(*convert.accept_args(args, partial=False))}

    @ls.command(CMD_ACCEPT_PARTIAL)
    def accept_partial(ls: IntarsiaServer, *args: Any) -> dict:
        return {"recorded": session_of(ls).accept(*convert.accept_args(args, partial=True))}

    @ls.command(CMD_GENERATE_FUNCTION)
    async def generate_function(ls: IntarsiaServer, *args: Any) -> dict:
        s = session_of(ls)
        res = await s.generate_function(*convert.location_args(args))
        result = convert.function_result(res)
        if not res.ok:
            return result
        if not ls.client_supports("workspace.apply_edit"):
            result["reason"] = "the client cannot apply workspace edits; the edit is in this result"
            return result
        wedit = convert.function_edit(res, document_changes=ls.client_supports(
            "workspace.workspace_edit.document_changes"))
        try:
            applied = await asyncio.wait_for(ls.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(
                edit=wedit, label=f"Intarsia: body of {res.name}")), timeout=30)
        except Exception as e:
            result["reason"] = f"workspace/applyEdit failed: {e}"
            return result
        result["applied"] = bool(applied and applied.applied)
        if applied is not None and not applied.applied:
            result["reason"] = f"the client did not apply the edit: {applied.failure_reason or 'no reason given'}"
        message = convert.function_message(res)
        if result["applied"] and message is not None:
            ls.ui.show_message(*message)
        return result

    return ls


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


__all__ = ["make_server", "serve", "setup_logging"]
