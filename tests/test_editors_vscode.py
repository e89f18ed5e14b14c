"""The VS Code extension (editors/vscode): it builds with tsc from its lock file, and its settings mirror the
server's (server/settings.py): every setting the server reads is contributed under the same name, with the
server's default, choices and bounds, and the section the extension sends (client-only keys stripped by
out/config.js) parses without a warning.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from intarsia.server.settings import DEVICES, ENGINES, MULTILINE, Settings, parse_settings

from test_editors_node import node_tools, npm_ci

EXT = Path(__file__).resolve().parent.parent / "editors" / "vscode"
PACKAGE = json.loads((EXT / "package.json").read_text())
PROPS: dict = PACKAGE["contributes"]["configuration"]["properties"]
# Settings of the extension itself (how to start the server, tracing): never sent to the server.
CLIENT_ONLY = {"intarsia.server.path", "intarsia.server.args", "intarsia.server.env", "intarsia.trace.server"}


def server_keys() -> dict:
    """The server's settings as clients send them (camelCase), with their defaults."""
    return Settings().to_json()


def test_every_server_setting_is_contributed_with_its_default():
    defaults = server_keys()
    assert set(defaults) >= {"engine", "model", "device", "adapter", "remoteEndpoint", "maxTokens", "debounceMs",
                             "multiline", "promptBudgetTokens", "contextBudgetTokens", "languages",
                             "triggerCharacters", "test"}
    missing = sorted(k for k in defaults if f"intarsia.{k}" not in PROPS)
    assert not missing, f"server settings missing from package.json: {missing}"
    for key, value in defaults.items():
        assert PROPS[f"intarsia.{key}"]["default"] == value, key
    extra = sorted(p for p in PROPS if p not in CLIENT_ONLY and p.removeprefix("intarsia.") not in defaults)
    assert not extra, f"package.json settings that the server does not know: {extra}"


def test_choices_and_bounds_match_the_server():
    assert PROPS["intarsia.engine"]["enum"] == list(ENGINES)
    assert PROPS["intarsia.device"]["enum"] == list(DEVICES)
    assert PROPS["intarsia.multiline"]["enum"] == list(MULTILINE)
    checked = 0
    for prop, schema in PROPS.items():
        if prop in CLIENT_ONLY or "minimum" not in schema:
            continue
        key = prop.removeprefix("intarsia.")
        lo, hi = schema["minimum"], schema["maximum"]
        step = 1 if "integer" in schema["type"] else 1e-6
        # contextBudgetTokens must stay below promptBudgetTokens: keep the other one out of the way.
        base = {"contextBudgetTokens": {"promptBudgetTokens": 32768}, "promptBudgetTokens": {"contextBudgetTokens": 0}
                }.get(key, {})
        for ok in (lo, hi):
            _, warnings = parse_settings({**base, key: ok})
            assert not warnings, (prop, ok, warnings)
        for bad in (lo - step, hi + step):
            _, warnings = parse_settings({**base, key: bad})
            assert any(key in w for w in warnings), (prop, bad, warnings)
        checked += 1
    # threads, lookupDraft, maxTokens, debounceMs, promptBudgetTokens, contextBudgetTokens, suffixBudgetTokens,
    # maxDocumentBytes
    assert checked == 8
    acs = PROPS["intarsia.acceptanceCheckSeconds"]
    lo, hi = acs["items"]["minimum"], acs["items"]["maximum"]
    assert not parse_settings({"acceptanceCheckSeconds": [lo] * acs["maxItems"]})[1]
    assert not parse_settings({"acceptanceCheckSeconds": [hi] * acs["minItems"]})[1]
    for bad in ([lo / 2], [hi * 2], [], [lo] * (acs["maxItems"] + 1)):
        assert parse_settings({"acceptanceCheckSeconds": bad})[1], bad
    test_props = PROPS["intarsia.test"]["properties"]
    assert set(test_props) == set(server_keys()["test"])
    for key in ("tokenDelayMs", "loadDelayMs"):
        hi = test_props[key]["maximum"]
        assert not parse_settings({"test": {key: hi}})[1]
        assert parse_settings({"test": {key: math.nextafter(hi, math.inf) + 1}})[1]


def _defaults_section() -> dict:
    """The "intarsia" section as VS Code builds it from the contributed defaults (dotted names nested)."""
    section: dict = {}
    for prop, schema in PROPS.items():
        *parents, leaf = prop.removeprefix("intarsia.").split(".")
        node = section
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = schema["default"]
    return section


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_extension_builds_and_sends_only_server_settings():
    node, npm = node_tools()
    npm_ci(EXT)
    proc = subprocess.run([npm, "exec", "--offline", "--", "tsc", "-p", "."], cwd=EXT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"tsc failed:\n{proc.stdout}\n{proc.stderr}"
    assert (EXT / "out" / "extension.js").is_file()
    assert (EXT / "out" / "config.js").is_file()
    assert PACKAGE["main"] == "./out/extension.js"

    # out/config.js is what the extension uses to build initializationOptions, didChangeConfiguration and the
    # workspace/configuration answer.
    section = _defaults_section()
    section["maxTokens"] = 7
    section["server"]["path"] = "~/bin/intarsia"
    script = (
        "const c = require('./out/config.js');"
        "const section = JSON.parse(process.argv[1]);"
        "const out = {sent: c.serverSection(section), launch: c.serverLaunch(section.server),"
        " bad: c.serverLaunch({path: 3, args: 'serve', env: {A: 1}}), notObject: c.serverSection([1])};"
        "process.stdout.write(JSON.stringify(out));"
    )
    proc = subprocess.run([node, "-e", script, json.dumps(section)], cwd=EXT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    sent = got["sent"]
    assert "server" not in sent and "trace" not in sent
    assert set(sent) == set(server_keys())
    settings, warnings = parse_settings(sent)
    assert warnings == []
    assert settings == Settings(max_tokens=7)
    launch = got["launch"]["launch"]
    assert launch["command"].endswith("/bin/intarsia") and not launch["command"].startswith("~")
    assert launch["args"] == ["serve"] and launch["env"] == {} and got["launch"]["problems"] == []
    assert got["bad"]["launch"] == {"command": "intarsia", "args": ["serve"], "env": {}}
    assert len(got["bad"]["problems"]) == 3
    assert got["notObject"] == {}


def test_commands_are_contributed_and_distinct_from_the_server_commands():
    ids = {c["command"] for c in PACKAGE["contributes"]["commands"]}
    assert "intarsia.generateFunctionFromDocstring" in ids
    gen = next(c for c in PACKAGE["contributes"]["commands"]
               if c["command"] == "intarsia.generateFunctionFromDocstring")
    assert f'{gen["category"]}: {gen["title"]}' == "Intarsia: Generate function from docstring"
    # The language client registers the server's own commands (executeCommandProvider) under their names; an
    # extension command with the same id would fail to register.
    server_commands = {"intarsia.generateFunction", "intarsia.accept", "intarsia.acceptPartial", "intarsia.status",
                       "intarsia.reloadModel"}
    assert not ids & server_commands
    source = (EXT / "src" / "extension.ts").read_text()
    for cid in ids:
        assert f"registerCommand('{cid}'" in source, cid
    lock = json.loads((EXT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/vscode-languageclient"]["version"] == \
        PACKAGE["dependencies"]["vscode-languageclient"]
