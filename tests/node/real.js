#!/usr/bin/env node
// Peer test against the real default model: `intarsia serve` (ORT engine, qwen2.5-coder-0.5b, built and cached
// beforehand) driven over stdio by vscode-languageserver-protocol: initialize, didOpen, an invoked
// textDocument/inlineCompletion inside a well-known function, intarsia.generateFunction (answering the server's
// workspace/applyEdit), shutdown/exit.
//
// Environment:
//   INTARSIA_SERVER_CMD  JSON array: the server command (default ["intarsia", "serve"])
//   INTARSIA_CACHE       passed through to the server (where the built model is)
// Prints one line per check, the received texts as JSON lines starting with "#", and a verdict; exits 0 when
// every check passed.
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
  ShutdownRequest,
  ExitNotification,
} = require('vscode-languageserver-protocol/node');
const { check, sleep, withTimeout, spawnServer, verdict, runMain } = require('./lib');

const TIMEOUT_MS = Number(process.env.INTARSIA_NODE_TEST_TIMEOUT_MS || 600000);
const FIB = 'def fibonacci(n):\n    if n < 2:\n        return n\n    return \n';
const AREA = 'def rectangle_area(width, height):\n    """Return the area of a width x height rectangle."""\n    pass\n';

async function main() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'intarsia-node-real-'));
  const settings = { engine: 'ort', debounceMs: 0 };
  const { conn, exited, stderr: serverStderr } = spawnServer(root);
  const applied = [];
  conn.onNotification('$/progress', () => {});
  conn.onNotification('window/showMessage', () => {});
  conn.onNotification('window/logMessage', () => {});
  conn.onRequest(ConfigurationRequest.type, (p) => p.items.map((it) => (it.section === 'intarsia' ? settings : null)));
  conn.onRequest(WorkDoneProgressCreateRequest.type, () => null);
  conn.onRequest(ApplyWorkspaceEditRequest.type, (p) => {
    applied.push(p);
    return { applied: true };
  });
  conn.listen();
  const exec = (command, ...a) =>
    withTimeout(conn.sendRequest(ExecuteCommandRequest.type, { command, arguments: a }), 300000, command);

  try {
    const rootUri = pathToFileURL(root).href;
    const init = await withTimeout(
      conn.sendRequest(InitializeRequest.type, {
        processId: process.pid,
        clientInfo: { name: 'intarsia-node-real-model-test', version: '0.1.0' },
        rootUri,
        workspaceFolders: [{ uri: rootUri, name: 'ws' }],
        initializationOptions: { intarsia: settings },
        capabilities: {
          general: { positionEncodings: ['utf-16'] },
          workspace: { applyEdit: true, configuration: true, workspaceEdit: { documentChanges: true } },
          textDocument: { synchronization: { didSave: true }, inlineCompletion: {} },
        },
      }),
      30000,
      'initialize'
    );
    check('inlineCompletionProvider is advertised', init.capabilities.inlineCompletionProvider, init.capabilities);
    conn.sendNotification(InitializedNotification.type, {});

    let st;
    const t0 = Date.now();
    for (;;) {
      st = await exec('intarsia.status');
      if (st.state === 'ready' || st.state === 'failed' || Date.now() - t0 > 300000) break;
      await sleep(200);
    }
    if (!check('the real model becomes ready', st.state === 'ready', st)) throw new Error('engine not ready');
    check('the engine is ORT on the default model', st.settings.engine === 'ort', st.settings);

    const uri = pathToFileURL(path.join(root, 'fib.py')).href;
    conn.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri, languageId: 'python', version: 1, text: FIB },
    });
    const res = await withTimeout(
      conn.sendRequest(InlineCompletionRequest.type, {
        textDocument: { uri },
        position: { line: 3, character: 11 },
        context: { triggerKind: InlineCompletionTriggerKind.Invoked },
      }),
      300000,
      'inlineCompletion'
    );
    const items = Array.isArray(res) ? res : (res && res.items) || [];
    const text = items.length ? (typeof items[0].insertText === 'string' ? items[0].insertText : items[0].insertText.value) : '';
    console.log('# ' + JSON.stringify({ inline: text }));
    check('an inline completion arrives', items.length >= 1, res);
    check('it completes the recursion', /fibonacci\(n\s*-\s*1\)/.test(text) && /fibonacci\(n\s*-\s*2\)/.test(text), text);
    check('its range starts at the cursor',
      !items[0].range || (items[0].range.start.line === 3 && items[0].range.start.character === 11), items[0]);

    const auri = pathToFileURL(path.join(root, 'area.py')).href;
    conn.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri: auri, languageId: 'python', version: 1, text: AREA },
    });
    const gen = await exec('intarsia.generateFunction', { uri: auri, position: { line: 0, character: 6 } });
    console.log('# ' + JSON.stringify({ generate: gen, applied }));
    check('generateFunction answers', gen !== undefined, gen);
    check('the server applied an edit through workspace/applyEdit', applied.length === 1, applied);
    const edits = applied.length ? JSON.stringify(applied[0].edit) : '';
    check('the generated body uses both parameters', edits.includes('width') && edits.includes('height'), edits);

    await withTimeout(conn.sendRequest(ShutdownRequest.type), 30000, 'shutdown');
    conn.sendNotification(ExitNotification.type);
    const ex = await withTimeout(exited, 30000, 'exit');
    check('the server exits with status 0 after shutdown/exit', ex.code === 0, ex);
  } finally {
    conn.dispose();
    fs.rmSync(root, { recursive: true, force: true });
  }
  return verdict(serverStderr);
}

runMain(main, TIMEOUT_MS);
