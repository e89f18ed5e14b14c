#!/usr/bin/env node
// Peer test: drives `intarsia serve` over stdio with the npm LSP client library (vscode-languageserver-protocol),
// as the VS Code extension does: initialize (+ workspace/configuration pull, progress), didOpen,
// textDocument/inlineCompletion, intarsia.accept, intarsia.generateFunction (answering the server's
// workspace/applyEdit), didChangeConfiguration, shutdown/exit.
//
// Environment:
//   INTARSIA_SERVER_CMD  JSON array: the server command (default ["intarsia", "serve"])
//   INTARSIA_CACHE       passed through to the server (where its acceptance log goes)
// Prints one line per check and a verdict; exits 0 when every check passed, 1 otherwise.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { pathToFileURL } = require('url');
const {
  InitializeRequest,
  InitializedNotification,
  InlineCompletionRequest,
  InlineCompletionTriggerKind,
  ExecuteCommandRequest,
  ApplyWorkspaceEditRequest,
  ConfigurationRequest,
  WorkDoneProgressCreateRequest,
  DidOpenTextDocumentNotification,
  DidChangeTextDocumentNotification,
  DidChangeConfigurationNotification,
  ShowMessageNotification,
  LogMessageNotification,
  ShutdownRequest,
  ExitNotification,
} = require('vscode-languageserver-protocol/node');

const TIMEOUT_MS = Number(process.env.INTARSIA_NODE_TEST_TIMEOUT_MS || 60000);

const TABLE = {
  'total = ': 'compute()',
  '\u{1F600}"; z = ': 'len(s)',
  'def area(points):\n    """Area of a polygon."""\n    ': 'return polygon_area(points)\n',
};

const { check, sleep, withTimeout, spawnServer, verdict, runMain } = require('./lib');

async function main() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'intarsia-node-ws-'));
  fs.writeFileSync(path.join(root, 'util.py'), 'def polygon_area(points):\n    return 0.0\n');
  const rootUri = pathToFileURL(root).href;
  const settings = { engine: 'test', debounceMs: 0, test: { table: TABLE } };

  const { child, conn, exited, stderr: serverStderr } = spawnServer(root);
  const shown = [];
  const logged = [];
  const applied = [];
  const configurationPulls = [];
  let progressCreated = 0;
  conn.onNotification(ShowMessageNotification.type, (p) => shown.push(p));
  conn.onNotification(LogMessageNotification.type, (p) => logged.push(p));
  conn.onNotification('$/progress', () => {});
  conn.onRequest(ConfigurationRequest.type, (p) => {
    configurationPulls.push(p);
    return p.items.map((it) => (it.section === 'intarsia' ? settings : null));
  });
  conn.onRequest(WorkDoneProgressCreateRequest.type, () => {
    progressCreated += 1;
    return null;
  });
  conn.onRequest(ApplyWorkspaceEditRequest.type, (p) => {
    applied.push(p);
    return { applied: true };
  });
  conn.onRequest((method) => {
    throw new Error(`unexpected request from the server: ${method}`);
  });
  conn.listen();

  const exec = (command, ...a) =>
    withTimeout(conn.sendRequest(ExecuteCommandRequest.type, { command, arguments: a }), 30000, command);

  try {
    // ---- initialize
    const init = await withTimeout(
      conn.sendRequest(InitializeRequest.type, {
        processId: process.pid,
        clientInfo: { name: 'intarsia-node-peer-test', version: '0.1.0' },
        rootUri,
        workspaceFolders: [{ uri: rootUri, name: 'ws' }],
        initializationOptions: { intarsia: settings },
        capabilities: {
          general: { positionEncodings: ['utf-16'] },
          window: { workDoneProgress: true },
          workspace: {
            applyEdit: true,
            configuration: true,
            workspaceEdit: { documentChanges: true },
            didChangeConfiguration: { dynamicRegistration: false },
            executeCommand: { dynamicRegistration: false },
          },
          textDocument: {
            synchronization: { dynamicRegistration: false, didSave: true },
            inlineCompletion: { dynamicRegistration: false },
            completion: { completionItem: { snippetSupport: false } },
          },
        },
      }),
      30000,
      'initialize'
    );
    const caps = init.capabilities;
    check('inlineCompletionProvider is advertised', caps.inlineCompletionProvider, caps);
    const commands = (caps.executeCommandProvider && caps.executeCommandProvider.commands) || [];
    const wanted = ['intarsia.generateFunction', 'intarsia.accept', 'intarsia.acceptPartial', 'intarsia.status',
      'intarsia.reloadModel'];
    check('the five intarsia commands are advertised', wanted.every((c) => commands.includes(c)), commands);
    check('the position encoding is UTF-16', caps.positionEncoding === 'utf-16', caps.positionEncoding);
    check('serverInfo.name is intarsia', init.serverInfo && init.serverInfo.name === 'intarsia', init.serverInfo);
    conn.sendNotification(InitializedNotification.type, {});

    // ---- wait until the test engine is loaded
    let st;
    const t0 = Date.now();
    for (;;) {
      st = await exec('intarsia.status');
      if (st.state === 'ready' || st.state === 'failed' || Date.now() - t0 > 30000) break;
      await sleep(50);
    }
    if (!check('the engine becomes ready', st.state === 'ready', st)) throw new Error('engine not ready');
    check('the server pulled the "intarsia" configuration section',
      configurationPulls.some((p) => p.items.some((it) => it.section === 'intarsia')), configurationPulls);
    check('model loading created a progress token', progressCreated >= 1, progressCreated);
    check('the engine is the test engine', st.settings && st.settings.engine === 'test', st.settings);

    // ---- inline completion from the table
    const uri = rootUri + '/main.py';
    const text = 'import os\ntotal = \ns = "\u{1F600}"; z = \n';
    conn.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri, languageId: 'python', version: 1, text },
    });
    const inline = (line, character) =>
      withTimeout(
        conn.sendRequest(InlineCompletionRequest.type, {
          textDocument: { uri },
          position: { line, character },
          context: { triggerKind: InlineCompletionTriggerKind.Invoked },
        }),
        30000,
        'textDocument/inlineCompletion'
      );
    const res = await inline(1, 8);
    const items = Array.isArray(res) ? res : (res && res.items) || [];
    const item = items[0];
    check('inlineCompletion returns one item', items.length === 1, res);
    if (item) {
      check('the item text comes from the table', item.insertText === 'compute()', item);
      const r = item.range;
      check('the item range is empty at the cursor (1:8)',
        r && r.start.line === 1 && r.start.character === 8 && r.end.line === 1 && r.end.character === 8, r);
      const ok = item.command && item.command.command === 'intarsia.accept' && item.command.arguments &&
        item.command.arguments[0] && typeof item.command.arguments[0].id === 'string';
      check('the item carries the intarsia.accept command with a suggestion id', ok, item.command);
      // Accept it as VS Code would: insert the text, then run the item's command.
      conn.sendNotification(DidChangeTextDocumentNotification.type, {
        textDocument: { uri, version: 2 },
        contentChanges: [{ range: r, text: item.insertText }],
      });
      if (ok) {
        const rec = await exec(item.command.command, ...item.command.arguments);
        check('intarsia.accept records the accept', rec && rec.recorded === true, rec);
      }
    }
    // UTF-16 positions: the emoji is two code units.
    const res2 = await inline(2, 14);
    const it2 = ((res2 && res2.items) || [])[0];
    check('a completion after an emoji is found at UTF-16 column 14',
      it2 && it2.insertText === 'len(s)' && it2.range.start.character === 14, res2);

    // ---- generateFunction: the server sends workspace/applyEdit
    const fnUri = rootUri + '/shapes.py';
    const fnText = 'from util import polygon_area\n\n\ndef area(points):\n    """Area of a polygon."""\n    pass\n';
    conn.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri: fnUri, languageId: 'python', version: 1, text: fnText },
    });
    const gen = await exec('intarsia.generateFunction', { uri: fnUri, position: { line: 3, character: 6 } });
    check('generateFunction reports the edit as applied', gen && gen.applied === true && gen.function === 'area',
      gen);
    check('the server sent exactly one workspace/applyEdit', applied.length === 1, applied);
    if (applied.length === 1) {
      const dc = (applied[0].edit.documentChanges || [])[0];
      const edit = dc && dc.edits && dc.edits[0];
      check('the edit targets shapes.py at version 1', dc && dc.textDocument.uri === fnUri &&
        dc.textDocument.version === 1, dc);
      check('the edit replaces `pass` with the body from the table', edit &&
        edit.newText === '\n    return polygon_area(points)' &&
        edit.range.start.line === 4 && edit.range.start.character === 28 &&
        edit.range.end.line === 5 && edit.range.end.character === 8, edit);
    }

    // ---- settings change pushed with didChangeConfiguration (what the extension sends on a change)
    settings.test = { table: { ...TABLE, 'fresh = ': 'value()' } };
    conn.sendNotification(DidChangeConfigurationNotification.type, { settings: { intarsia: settings } });
    await sleep(100);
    const t1 = Date.now();
    for (;;) {
      st = await exec('intarsia.status');
      if (st.state === 'ready' && st.settings.test.table['fresh = '] === 'value()') break;
      if (st.state === 'failed' || Date.now() - t1 > 30000) break;
      await sleep(50);
    }
    check('didChangeConfiguration reloads the engine with the new table',
      st.state === 'ready' && st.settings.test.table['fresh = '] === 'value()', st.settings);
    const freshUri = rootUri + '/fresh.py';
    conn.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri: freshUri, languageId: 'python', version: 1, text: 'fresh = \n' },
    });
    const res3 = await withTimeout(conn.sendRequest(InlineCompletionRequest.type, {
      textDocument: { uri: freshUri }, position: { line: 0, character: 8 },
      context: { triggerKind: InlineCompletionTriggerKind.Invoked },
    }), 30000, 'textDocument/inlineCompletion');
    const it3 = ((res3 && res3.items) || [])[0];
    check('the new table entry answers', it3 && it3.insertText === 'value()', res3);

    const warnings = shown.filter((m) => m.type <= 2);
    check('no error or warning was shown (the settings are all valid)', warnings.length === 0, warnings);

    // ---- shutdown / exit
    await withTimeout(conn.sendRequest(ShutdownRequest.type), 15000, 'shutdown');
    conn.sendNotification(ExitNotification.type);
    const ex = await withTimeout(exited, 15000, 'server exit');
    check('the server exits with status 0 after shutdown/exit', ex.code === 0, ex);
  } catch (e) {
    check(`no exception (${e && e.message})`, false, e && e.stack);
    if (child.exitCode === null) child.kill();
  } finally {
    conn.dispose();
    fs.rmSync(root, { recursive: true, force: true });
  }
  return verdict(serverStderr);
}

runMain(main, TIMEOUT_MS);
