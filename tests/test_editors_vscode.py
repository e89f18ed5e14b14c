"""The VS Code extension (editors/vscode): it builds with tsc from its lock file, and its settings mirror the
server's (server/lsp/settings.py): every setting the server reads is contributed under the same name, with the
server's default, choices and bounds, and the section the extension sends (client-only keys stripped by
out/config.js) parses without a warning. Workspace Trust: the settings that point at code, files or endpoints are
restricted in untrusted workspaces (package.json and out/config.js's own filter), and the server command is
machine-scoped. `npm run package` (vsce) makes the .vsix users install: it holds the compiled extension and its
run-time dependencies and nothing else, and its JavaScript loads under Node. The cursor notification
(`intarsia/didMoveCursor`): its setting is client-only, and out/cursor.js (debounce, params) passes
tests/node/cursor.js.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from intarsia.server.lsp.settings import DEVICES, ENGINES, FUNCTION_MODES, MULTILINE, Settings, parse_settings

from test_editors_node import node_tools, npm_ci

EXT = Path(__file__).resolve().parent.parent / "editors" / "vscode"
PACKAGE = json.loads((EXT / "package.json").read_text())
PROPS: dict = PACKAGE["contributes"]["configuration"]["properties"]
# Settings of the extension itself (how to start the server, tracing, the pause before the cursor notification):
# never sent to the server.
CLIENT_ONLY = {"intarsia.server.path", "intarsia.server.args", "intarsia.server.env", "intarsia.trace.server",
               "intarsia.cursorNotifyMs"}
# Settings that choose code or files to load (model, adapter), where the user's code goes (remote engine, endpoint,
# model name on a gateway) or how it is laid out in the prompt: never from an untrusted workspace.
MUST_RESTRICT = {"intarsia.engine", "intarsia.model", "intarsia.adapter", "intarsia.remoteEndpoint",
                 "intarsia.remoteModel", "intarsia.fimFormat"}
# Scopes VS Code reads from workspace or folder settings (window is the default when none is given).
WORKSPACE_SCOPES = {"window", "resource", "language-overridable", "machine-overridable"}


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
    assert PROPS["intarsia.generateFunctionMode"]["enum"] == list(FUNCTION_MODES)
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
    # maxDocumentBytes, generateFunctionBudgetS, ...
    assert checked == 12
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


def test_untrusted_workspaces_get_no_code_file_or_endpoint_settings():
    caps = PACKAGE.get("capabilities", {})
    trust = caps.get("untrustedWorkspaces")
    assert trust and trust["supported"] == "limited" and trust["description"].strip(), trust
    restricted = set(trust["restrictedConfigurations"])
    assert restricted >= MUST_RESTRICT, f"not restricted: {sorted(MUST_RESTRICT - restricted)}"
    assert restricted <= set(PROPS), f"restricted but not contributed: {sorted(restricted - set(PROPS))}"
    # Any free-form string setting (a path, a URL, a name) is restricted, or not workspace-settable at all.
    for prop, schema in PROPS.items():
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if "string" in types and "enum" not in schema:
            assert prop in restricted or schema.get("scope") in ("machine", "application"), prop
    virtual = caps.get("virtualWorkspaces")
    assert virtual is not None and virtual["supported"] is False and virtual["description"].strip(), virtual


def test_server_command_is_never_taken_from_a_workspace():
    server = {p: s for p, s in PROPS.items() if p.startswith("intarsia.server.")}
    assert set(server) == {"intarsia.server.path", "intarsia.server.args", "intarsia.server.env"}
    for prop, schema in server.items():
        # "machine": user or remote settings only (the path is one on the machine the server runs on).
        assert schema.get("scope", "window") == "machine", (prop, schema.get("scope"))
        assert schema.get("scope", "window") not in WORKSPACE_SCOPES
    source = (EXT / "src" / "extension.ts").read_text()
    for key in ("server.path", "server.args", "server.env"):
        assert f"userValue(config.inspect('{key}'))" in source, key
    assert "onDidGrantWorkspaceTrust" in source and "untrustedSection(" in source and "isTrusted" in source


@pytest.fixture(scope="module")
def built_extension() -> str:
    """Node, after `npm ci` and `tsc -p .` in editors/vscode (out/extension.js, out/config.js)."""
    node, npm = node_tools()
    npm_ci(EXT)
    proc = subprocess.run([npm, "exec", "--offline", "--", "tsc", "-p", "."], cwd=EXT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"tsc failed:\n{proc.stdout}\n{proc.stderr}"
    assert (EXT / "out" / "extension.js").is_file()
    assert (EXT / "out" / "config.js").is_file()
    return node


def _run_config_js(node: str, script: str, *args: str) -> dict:
    proc = subprocess.run([node, "-e", "const c = require('./out/config.js');" + script, *args], cwd=EXT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_untrusted_workspace_values_of_restricted_settings_do_not_reach_the_server(built_extension):
    # The section as VS Code would merge it if it did not filter: a repository's .vscode/settings.json sets the
    # model, adapter, endpoint and engine, and the server's own aliases and nesting for the endpoint; the user has
    # chosen a model; maxTokens from the workspace is harmless and stays.
    user = {"model": "qwen2.5-coder-1.5b"}
    workspace = {"model": "/tmp/evil-model", "adapter": "/tmp/evil.onnx_adapter", "engine": "remote",
                 "remoteEndpoint": "http://evil.example/v1", "remoteModel": "evil", "fimFormat": "evil",
                 "endpoint": "http://evil.example/alias", "remote_endpoint": "http://evil.example/snake",
                 "intarsia": {"remoteEndpoint": "http://evil.example/nested"}, "maxTokens": 7}
    defaults = _defaults_section()
    section = {**defaults, **user, **workspace}
    # What inspect(key) reports: a value only where one is set (no default for a key package.json lacks).
    inspect = {k: {name: level[k] for name, level in (("defaultValue", defaults), ("globalValue", user),
                                                      ("workspaceValue", workspace)) if k in level}
               for k in section}
    script = (
        "const [section, inspect, pkg] = process.argv.slice(1).map((a) => JSON.parse(a));"
        "const contributed = c.contributedKeys(pkg);"
        "const look = (k) => inspect[k] && JSON.parse(JSON.stringify(inspect[k]));"
        "const trusted = c.serverSection(section);"
        "const untrusted = c.untrustedSection(trusted, contributed, look);"
        "process.stdout.write(JSON.stringify({restricted: c.RESTRICTED_KEYS, contributed, trusted, untrusted,"
        " user: c.userValue({defaultValue: 'intarsia', workspaceValue: '/tmp/evil'}),"
        " userSet: c.userValue({defaultValue: 'intarsia', globalValue: '~/bin/intarsia', workspaceValue: 'x'}),"
        " none: c.userValue(undefined) === undefined}));"
    )
    got = _run_config_js(built_extension, script, json.dumps(section), json.dumps(inspect), json.dumps(PACKAGE))

    restricted = set(PACKAGE["capabilities"]["untrustedWorkspaces"]["restrictedConfigurations"])
    assert {f"intarsia.{k}" for k in got["restricted"]} == restricted
    assert set(got["contributed"]) == {p.removeprefix("intarsia.").split(".")[0] for p in PROPS}
    # Trusted: the workspace's values go to the server as they are.
    assert got["trusted"]["remoteEndpoint"] == "http://evil.example/v1"
    untrusted = got["untrusted"]
    assert "evil" not in json.dumps(untrusted), untrusted
    assert not {"endpoint", "remote_endpoint", "intarsia", "server", "trace", "cursorNotifyMs"} & set(untrusted)
    assert set(untrusted) == set(server_keys())
    settings, warnings = parse_settings(untrusted)
    assert warnings == []
    assert settings == Settings(model="qwen2.5-coder-1.5b", max_tokens=7)
    assert (got["user"], got["userSet"], got["none"]) == ("intarsia", "~/bin/intarsia", True)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_extension_builds_and_sends_only_server_settings(built_extension):
    node = built_extension
    assert PACKAGE["main"] == "./out/extension.js"

    # out/config.js is what the extension uses to build initializationOptions, didChangeConfiguration and the
    # workspace/configuration answer.
    section = _defaults_section()
    section["maxTokens"] = 7
    section["server"]["path"] = "~/bin/intarsia"
    script = (
        "const c = require('./out/config.js');"
        "const section = JSON.parse(process.argv[1]);"
        "const out = {sent: c.serverSection(section), launch: c.serverLaunch(section.server), clientOnly:"
        " c.CLIENT_ONLY_KEYS,"
        " bad: c.serverLaunch({path: 3, args: 'serve', env: {A: 1}}), notObject: c.serverSection([1])};"
        "process.stdout.write(JSON.stringify(out));"
    )
    proc = subprocess.run([node, "-e", script, json.dumps(section)], cwd=EXT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    sent = got["sent"]
    assert "server" not in sent and "trace" not in sent and "cursorNotifyMs" not in sent
    assert set(sent) == set(server_keys())
    # config.ts strips exactly the client-only settings package.json contributes.
    assert set(got["clientOnly"]) == {p.removeprefix("intarsia.").split(".")[0] for p in CLIENT_ONLY}
    settings, warnings = parse_settings(sent)
    assert warnings == []
    assert settings == Settings(max_tokens=7)
    launch = got["launch"]["launch"]
    assert launch["command"].endswith("/bin/intarsia") and not launch["command"].startswith("~")
    assert launch["args"] == ["serve"] and launch["env"] == {} and got["launch"]["problems"] == []
    assert got["bad"]["launch"] == {"command": "intarsia", "args": ["serve"], "env": {}}
    assert len(got["bad"]["problems"]) == 3
    assert got["notObject"] == {}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cursor_notification_debounce_and_params(built_extension):
    """out/cursor.js (the part of `intarsia/didMoveCursor` that needs no `vscode`): tests/node/cursor.js checks
    the setting's values, the params, when it is sent, and the trailing debounce with a fake clock."""
    node = built_extension
    script = EXT.parent.parent / "tests" / "node" / "cursor.js"
    proc = subprocess.run([node, str(script), str(EXT / "out" / "cursor.js")], cwd=EXT, capture_output=True,
                          text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "PASS: all" in proc.stdout and "not ok" not in proc.stdout, out[-6000:]
    assert proc.stdout.count("\nok ") + proc.stdout.startswith("ok ") >= 45, out
    # The contributed setting matches the module's default and bounds.
    consts = _run_config_js(node, "const k = require('./out/cursor.js'); process.stdout.write(JSON.stringify({"
                            "d: k.DEFAULT_CURSOR_NOTIFY_MS, max: k.MAX_CURSOR_NOTIFY_MS, m: k.DID_MOVE_CURSOR_METHOD}))")
    prop = PROPS["intarsia.cursorNotifyMs"]
    assert (prop["type"], prop["default"], prop["minimum"], prop["maximum"]) == ("integer", consts["d"], 0,
                                                                                 consts["max"])
    assert consts["m"] == "intarsia/didMoveCursor"
    # Not a setting that decides what runs or where code goes: readable from workspace settings.
    assert prop.get("scope", "window") in WORKSPACE_SCOPES
    # The extension sends it for the active editor's primary selection, through the client's converter.
    source = (EXT / "src" / "extension.ts").read_text()
    for needle in ("onDidChangeTextEditorSelection", "onDidChangeActiveTextEditor",
                   "code2ProtocolConverter.asPosition(editor.selection.active)",
                   "code2ProtocolConverter.asUri(document.uri)", "get('cursorNotifyMs')"):
        assert needle in source, needle


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


# The package users install (`code --install-extension`): `npm run package` leaves it here (gitignored).
VSIX = EXT / f"{PACKAGE['name']}-{PACKAGE['version']}.vsix"
LOCK_PACKAGES: dict = json.loads((EXT / "package-lock.json").read_text())["packages"]


def _top_package(path: str) -> str:
    """'node_modules/@scope/name' or 'node_modules/name' of a path under node_modules/."""
    parts = path.split("/")
    return "/".join(parts[:3] if parts[1].startswith("@") else parts[:2])


@pytest.fixture(scope="module")
def packaged_extension(built_extension, tmp_path_factory) -> tuple[str, Path, list[str], str]:
    """(node, the unpacked .vsix, its member names, vsce's output) after `npm run package` in editors/vscode."""
    node = built_extension
    _, npm = node_tools()
    VSIX.unlink(missing_ok=True)
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"}
    # stdin closed: the script must not wait for an answer (vsce asks about a missing repository or license).
    proc = subprocess.run([npm, "run", "package"], cwd=EXT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"npm run package failed:\n{out[-3000:]}"
    assert VSIX.is_file(), out[-3000:]
    unpacked = tmp_path_factory.mktemp("vsix")
    with zipfile.ZipFile(VSIX) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        zf.extractall(unpacked)
    return node, unpacked, names, out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_vsix_holds_the_extension_and_its_runtime_dependencies_only(packaged_extension):
    _, unpacked, names, out = packaged_extension
    # The flags of the package script: no question about a repository or a license (in a terminal vsce would ask).
    assert "--allow-missing-repository" in PACKAGE["scripts"]["package"]
    assert "'repository' field is missing" not in out and "LICENSE.txt not found" not in out, out
    assert PACKAGE["devDependencies"]["@vscode/vsce"] == LOCK_PACKAGES["node_modules/@vscode/vsce"]["version"]

    files = [n for n in names if not n.endswith("/")]
    assert len(files) == len(set(files))
    assert {"extension.vsixmanifest", "[Content_Types].xml"} <= set(files)
    ext = sorted(n.removeprefix("extension/") for n in files if n.startswith("extension/"))
    assert len(ext) == len(files) - 2, sorted(set(files) - {f"extension/{n}" for n in ext})
    # Top level: the manifest, the readme, the compiled JavaScript, node_modules; no src/, tsconfig.json, .vscode/.
    assert {n.split("/")[0] for n in ext} == {"package.json", "readme.md", "out", "node_modules"}
    compiled = {f"out/{ts.stem}.js" for ts in (EXT / "src").glob("*.ts")}
    assert compiled >= {"out/extension.js", "out/config.js"}
    assert {n for n in ext if n.startswith("out/")} == compiled
    assert not [n for n in ext if n.endswith((".ts", ".map", ".tsbuildinfo", ".vsix"))]

    # Every run-time package of the lock file is in, with the version the lock file pins; no dev package is.
    runtime = {k: v for k, v in LOCK_PACKAGES.items() if k and not v.get("dev")}
    dev = {k for k, v in LOCK_PACKAGES.items() if k and v.get("dev")}
    assert "node_modules/vscode-languageclient" in runtime and "node_modules/vscode-jsonrpc" in runtime
    assert {"node_modules/typescript", "node_modules/@vscode/vsce", "node_modules/@types/node",
            "node_modules/@types/vscode"} <= dev
    for key, meta in runtime.items():
        manifest = unpacked / "extension" / key / "package.json"
        assert manifest.is_file(), key
        assert json.loads(manifest.read_text())["version"] == meta["version"], key
    packaged = {_top_package(n) for n in ext if n.startswith("node_modules/")}
    assert packaged == {k for k in runtime if k.count("node_modules/") == 1}, packaged
    for key in dev:
        assert not [n for n in ext if n.startswith(key + "/")], key
    # What `require('vscode-languageclient/node')` resolves to (its package.json "exports").
    assert "node_modules/vscode-languageclient/lib/node/main.js" in ext

    # The packaged manifest is the repository's.
    inside = json.loads((unpacked / "extension" / "package.json").read_text())
    for field in ("name", "publisher", "version", "main", "engines", "activationEvents", "contributes",
                  "capabilities", "dependencies"):
        assert inside.get(field) == PACKAGE[field], field
    assert set(inside["contributes"]["configuration"]["properties"]) == set(PROPS)
    identity = ET.parse(unpacked / "extension.vsixmanifest").getroot().find(".//{*}Identity")
    assert identity is not None
    assert (identity.get("Id"), identity.get("Publisher"), identity.get("Version")) == \
        (PACKAGE["name"], PACKAGE["publisher"], PACKAGE["version"])


# Follows every require() from out/extension.js through the packaged node_modules: each must resolve inside the
# package (only 'vscode', which VS Code provides, and Node's own modules are left out).
_REQUIRE_WALK = r"""
const fs = require('fs'), path = require('path'), { createRequire, builtinModules } = require('module');
const root = process.argv[1];
const seen = new Set(), missing = [], outside = [];
const queue = [path.join(root, 'out', 'extension.js')];
while (queue.length) {
  const file = queue.pop();
  if (seen.has(file)) continue;
  seen.add(file);
  const req = createRequire(file);
  for (const m of fs.readFileSync(file, 'utf8').matchAll(/\brequire\(\s*["']([^"']+)["']\s*\)/g)) {
    const spec = m[1];
    if (spec === 'vscode' || builtinModules.includes(spec.replace(/^node:/, ''))) continue;
    let found;
    try { found = req.resolve(spec); } catch (e) { missing.push(path.relative(root, file) + ': ' + spec); continue; }
    if (path.relative(root, found).startsWith('..')) outside.push(spec + ' -> ' + found);
    else if (found.endsWith('.js')) queue.push(found);
  }
}
const c = require(path.join(root, 'out', 'config.js'));
const protocol = createRequire(path.join(root, 'out', 'extension.js'))('vscode-languageserver-protocol/node');
process.stdout.write(JSON.stringify({
  files: [...seen].map((f) => path.relative(root, f)), missing, outside,
  sent: c.serverSection(JSON.parse(process.argv[2])),
  inline: protocol.InlineCompletionRequest.method,
}));
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_packaged_javascript_loads_with_its_dependencies(packaged_extension, tmp_path):
    node, unpacked, _, _ = packaged_extension
    section = _defaults_section()
    section["maxTokens"] = 7
    # Run from elsewhere: the repository's own out/ and node_modules must not be what gets loaded.
    proc = subprocess.run([node, "-e", _REQUIRE_WALK, str(unpacked / "extension"), json.dumps(section)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["missing"] == [] and got["outside"] == [], (got["missing"], got["outside"])
    # Each run-time package of the lock file is reached from out/extension.js (none is packaged for nothing).
    reached = {_top_package(f) for f in got["files"] if f.startswith("node_modules/")}
    assert reached == {k for k, v in LOCK_PACKAGES.items() if k.count("node_modules/") == 1 and not v.get("dev")}
    assert "node_modules/vscode-languageclient/lib/node/main.js" in got["files"]
    assert got["inline"] == "textDocument/inlineCompletion"
    sent = got["sent"]
    assert "server" not in sent and "trace" not in sent and "cursorNotifyMs" not in sent
    settings, warnings = parse_settings(sent)
    assert warnings == [] and settings == Settings(max_tokens=7)
