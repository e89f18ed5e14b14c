"""Conversions between LSP messages (lsprotocol types, command arguments) and the session's plain values.

The handlers in `server.py` only call these and the session; every wire format the server reads or writes is
here, in one place: a change of the protocol's shapes is a change of this file.
"""

from __future__ import annotations

from typing import Any, Optional

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from .session import FunctionEdit, Suggestion

CMD_GENERATE_FUNCTION = "intarsia.generateFunction"
CMD_ACCEPT = "intarsia.accept"
CMD_ACCEPT_PARTIAL = "intarsia.acceptPartial"
CMD_STATUS = "intarsia.status"
CMD_RELOAD = "intarsia.reloadModel"

Change = tuple[Optional[tuple[int, int, int, int]], str]  # (range or None for the whole text, new text)


def lsp_range(start: tuple[int, int], end: tuple[int, int]) -> types.Range:
    return types.Range(start=types.Position(line=start[0], character=start[1]),
                       end=types.Position(line=end[0], character=end[1]))


def content_changes(params: types.DidChangeTextDocumentParams) -> list[Change]:
    out: list[Change] = []
    for c in params.content_changes:
        if isinstance(c, types.TextDocumentContentChangePartial):
            r = c.range
            out.append(((r.start.line, r.start.character, r.end.line, r.end.character), c.text))
        else:
            out.append((None, c.text))
    return out


def accept_command(sug: Suggestion) -> types.Command:
    return types.Command(title="Intarsia: suggestion accepted", command=CMD_ACCEPT, arguments=[{"id": sug.id}])


def inline_list(sug: Optional[Suggestion]) -> types.InlineCompletionList:
    if sug is None:
        return types.InlineCompletionList(items=[])
    item = types.InlineCompletionItem(insert_text=sug.text, range=lsp_range(sug.position, sug.position),
                                      command=accept_command(sug))
    return types.InlineCompletionList(items=[item])


def completion_list(sug: Optional[Suggestion]) -> types.CompletionList:
    """One item carrying the whole suggestion; its label is the word being typed plus the first line."""
    if sug is None:
        return types.CompletionList(is_incomplete=False, items=[])
    first = sug.text.split("\n", 1)[0].rstrip("\r")
    label = (sug.word + first).strip() or sug.text.strip().splitlines()[0]
    if len(label) > 60:
        label = label[:59] + "…"
    elif "\n" in sug.text.rstrip("\n"):
        label += " …"
    item = types.CompletionItem(
        label=label,
        kind=types.CompletionItemKind.Text,
        detail="Intarsia",
        documentation=types.MarkupContent(kind=types.MarkupKind.PlainText, value=sug.word + sug.text),
        insert_text_format=types.InsertTextFormat.PlainText,
        filter_text=sug.word + first,
        sort_text="0",
        text_edit=types.TextEdit(range=lsp_range(sug.word_start, sug.position), new_text=sug.word + sug.text),
        command=accept_command(sug),
    )
    return types.CompletionList(is_incomplete=True, items=[item])


def function_edit(res: FunctionEdit, *, document_changes: bool) -> types.WorkspaceEdit:
    edit = types.TextEdit(range=lsp_range(res.start, res.end), new_text=res.new_text)
    if document_changes:
        return types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(
            text_document=types.OptionalVersionedTextDocumentIdentifier(uri=res.uri, version=res.version),
            edits=[edit])])
    return types.WorkspaceEdit(changes={res.uri: [edit]})


def function_result(res: FunctionEdit) -> dict:
    """The command's result: whether the body was applied, why not, the edit itself, and the docstring examples'
    verdict (`verification`: null when none were checked)."""
    if not res.ok:
        return {"applied": False, "reason": res.reason, "function": res.name or None,
                "attempts": list(res.attempts)}
    return {"applied": False, "reason": res.reason, "function": res.name, "strategy": res.strategy,
            "attempts": list(res.attempts),
            "verification": res.verification.to_json() if res.verification is not None else None,
            "edit": {"range": {"start": {"line": res.start[0], "character": res.start[1]},
                               "end": {"line": res.end[0], "character": res.end[1]}},
                     "newText": res.new_text, "version": res.version}}


def function_message(res: FunctionEdit) -> Optional[tuple[str, str]]:
    """(level, text) of the window/showMessage that tells which docstring examples the applied body passes; None
    when no example was checked."""
    v = res.verification
    if v is None:
        return None
    return ("info" if v.verified else "warning"), f"Intarsia: body of {res.name}: {v.message}"


def accept_args(args: tuple, *, partial: bool) -> tuple[str, Optional[int]]:
    """[{"id": str, "acceptedLength"?: int}] or [id, n?] → (id, accepted characters or None for all)."""
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
    return sid, n


def location_args(args: tuple) -> tuple[str, int, int]:
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


DID_MOVE_CURSOR = "intarsia/didMoveCursor"


def cursor_params(params: Any) -> Optional[tuple[str, int, int, int]]:
    """(uri, version, line, character) of an `intarsia/didMoveCursor` notification, or None when malformed:
    {"textDocument": {"uri", "version"}, "position": {"line", "character"}}."""
    def get(obj: Any, key: str) -> Any:
        return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)

    doc, pos = get(params, "textDocument"), get(params, "position")
    uri, version = get(doc, "uri"), get(doc, "version")
    line, ch = get(pos, "line"), get(pos, "character")
    if not isinstance(uri, str) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                           for v in (version, line, ch)):
        return None
    return uri, version, line, ch


def status_uri(args: tuple) -> Optional[str]:
    uri = args[0].get("uri") if args and isinstance(args[0], dict) else None
    return uri if isinstance(uri, str) else None


__all__ = ["CMD_GENERATE_FUNCTION", "CMD_ACCEPT", "CMD_ACCEPT_PARTIAL", "CMD_STATUS", "CMD_RELOAD", "lsp_range",
           "content_changes", "accept_command", "inline_list", "completion_list", "function_edit", "function_result",
           "function_message", "accept_args", "location_args", "status_uri", "DID_MOVE_CURSOR", "cursor_params"]
