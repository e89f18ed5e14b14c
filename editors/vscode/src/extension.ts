// Intarsia for VS Code: starts `intarsia serve` (stdio) with vscode-languageclient.
//
// - Inline completions: the language client's own textDocument/inlineCompletion support (LSP 3.18). Each item
//   carries the server's `intarsia.accept` command, which VS Code runs after the suggestion is accepted; the
//   client forwards it to the server (workspace/executeCommand), so accepts reach the acceptance log.
// - "Intarsia: Generate function from docstring" sends `intarsia.generateFunction` with the active editor's
//   uri and cursor; the server answers with workspace/applyEdit, which the client applies.
// - Settings: the "intarsia" section (same names as the server's settings) goes to the server in
//   initializationOptions, on every change in workspace/didChangeConfiguration, and as the answer to the
//   server's workspace/configuration request; `intarsia.server.*` (how to start it) restarts the server.
// - Workspace Trust: in Restricted Mode the settings that point at code, files or endpoints (config.ts's
//   RESTRICTED_KEYS) and keys package.json does not contribute are sent with the user's values only; the
//   machine-scoped `intarsia.server.*` are always read from user (or remote) settings. Granting trust sends the
//   workspace's settings.
// - Cursor: `intarsia/didMoveCursor` tells the server where the active editor's cursor is, a pause
//   (`intarsia.cursorNotifyMs`, client-only) after the primary selection last moved or the active editor changed,
//   so that it can pre-compute the suggestion there (cursor.ts: debounce and params; here: the vscode wiring).

import * as vscode from 'vscode';
import {
  DidChangeConfigurationNotification,
  DidChangeTextDocumentNotification,
  DidCloseTextDocumentNotification,
  DidOpenTextDocumentNotification,
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  NotificationType,
  ServerOptions,
  State,
} from 'vscode-languageclient/node';

import {
  contributedKeys,
  needsRestart,
  serverLaunch,
  serverSection,
  untrustedSection,
  userValue,
} from './config';
import {
  ChangesInFlight,
  CursorNotifier,
  CursorSnapshot,
  DID_MOVE_CURSOR_METHOD,
  DidMoveCursorParams,
  cursorNotifyMs,
  cursorSnapshot,
} from './cursor';

const SECTION = 'intarsia';

let client: LanguageClient | undefined;
let output: vscode.LogOutputChannel;
let statusItem: vscode.StatusBarItem;
/** The settings package.json contributes (first names after "intarsia."). */
let contributed: string[] = [];
/** The didChange notifications the current client is sending. */
let changing = new ChangesInFlight();
let cursorNotifier: CursorNotifier | undefined;

const DidMoveCursorNotification = new NotificationType<DidMoveCursorParams>(DID_MOVE_CURSOR_METHOD);

function currentServerSettings(): { [key: string]: unknown } {
  const config = vscode.workspace.getConfiguration(SECTION);
  const section = serverSection(config);
  return vscode.workspace.isTrusted ? section : untrustedSection(section, contributed, (key) => config.inspect(key));
}

function createClient(): LanguageClient {
  // Machine-scoped: VS Code never takes them from workspace settings, and neither does this.
  const config = vscode.workspace.getConfiguration(SECTION);
  const server = {
    path: userValue(config.inspect('server.path')),
    args: userValue(config.inspect('server.args')),
    env: userValue(config.inspect('server.env')),
  };
  const { launch, problems } = serverLaunch(server);
  for (const p of problems) {
    output.warn(p);
  }
  output.info(`starting ${[launch.command, ...launch.args].join(' ')}`);
  const serverOptions: ServerOptions = {
    command: launch.command,
    args: launch.args,
    options: { env: { ...process.env, ...launch.env } },
  };
  const clientOptions: LanguageClientOptions = {
    // Every file and unsaved document: the server decides per language (intarsia.languages).
    documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
    outputChannel: output,
    initializationOptions: () => ({ [SECTION]: currentServerSettings() }),
    middleware: {
      workspace: {
        // The server pulls the "intarsia" section after initialize: answer what the notifications send.
        configuration: async (params, token, next) => {
          const result = await next(params, token);
          if (!Array.isArray(result)) {
            return result;
          }
          return result.map((value, i) =>
            params.items[i] && params.items[i].section === SECTION ? currentServerSettings() : value
          );
        },
      },
    },
  };
  const c = new LanguageClient(SECTION, 'Intarsia', serverOptions, clientOptions);
  c.onDidChangeState((e) => {
    updateStatus(e.newState);
    if (e.newState === State.Running) {
      // A new server knows nothing of the cursor: tell it where it is.
      cursorNotifier?.reset();
      cursorNotifier?.moved();
    }
  });
  trackChanges(c);
  return c;
}

/** Follow the didChange notifications `c` is sending (the cursor notification waits while one is on its way). */
function trackChanges(c: LanguageClient): void {
  const inFlight = new ChangesInFlight();
  changing = inFlight;
  const didChange = c.getFeature(DidChangeTextDocumentNotification.method);
  didChange.onAboutToSendNotification((e) =>
    inFlight.aboutToSend(e.params.textDocument.uri, e.params.textDocument.version)
  );
  didChange.onNotificationSent((e) => inFlight.sent(e.params.textDocument.uri, e.params.textDocument.version));
  c.getFeature(DidCloseTextDocumentNotification.method).onNotificationSent((e) =>
    inFlight.closed(e.params.textDocument.uri)
  );
}

/** Whether `c` has opened `document` on the server (didOpen sent; the documentSelector matched). */
function isOpened(c: LanguageClient, document: vscode.TextDocument): boolean {
  const key = document.uri.toString();
  for (const d of c.getFeature(DidOpenTextDocumentNotification.method).openDocuments) {
    if (d === document || d.uri.toString() === key) {
      return true;
    }
  }
  return false;
}

/** What the cursor notification would carry now (cursor.ts's cursorSnapshot decides). */
function currentCursor(): CursorSnapshot {
  const editor = vscode.window.activeTextEditor;
  const c = client;
  if (editor === undefined || c === undefined) {
    return undefined;
  }
  const document = editor.document;
  const running = c.isRunning();
  const uri = c.code2ProtocolConverter.asUri(document.uri);
  return cursorSnapshot({
    running,
    scheme: document.uri.scheme,
    uri,
    version: document.version,
    opened: running && isOpened(c, document),
    changing: changing.has(uri),
    position: c.code2ProtocolConverter.asPosition(editor.selection.active),
  });
}

function sendCursor(params: DidMoveCursorParams): Promise<void> {
  const c = client;
  if (c === undefined || !c.isRunning()) {
    return Promise.resolve();
  }
  return c.sendNotification(DidMoveCursorNotification, params);
}

function cursorNotifyDelay(): number {
  return cursorNotifyMs(vscode.workspace.getConfiguration(SECTION).get('cursorNotifyMs'));
}

function updateStatus(state: State): void {
  if (state === State.Running) {
    statusItem.text = '$(sparkle) Intarsia';
    statusItem.tooltip = 'Intarsia is running: click for its status';
  } else if (state === State.Starting) {
    statusItem.text = '$(sync~spin) Intarsia';
    statusItem.tooltip = 'Intarsia is starting';
  } else {
    statusItem.text = '$(warning) Intarsia';
    statusItem.tooltip = 'Intarsia is not running: see the Intarsia output; click for its status';
  }
  statusItem.show();
}

async function startClient(): Promise<void> {
  client = createClient();
  try {
    await client.start();
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    output.error(`the server did not start: ${message}`);
    void vscode.window
      .showErrorMessage(
        `Intarsia: the language server did not start (${message}). Is \`intarsia\` installed? ` +
          'Set intarsia.server.path to its full path.',
        'Open Settings'
      )
      .then((choice) => {
        if (choice === 'Open Settings') {
          void vscode.commands.executeCommand('workbench.action.openSettings', 'intarsia.server');
        }
      });
  }
}

async function stopClient(): Promise<void> {
  const c = client;
  client = undefined;
  if (c !== undefined && c.state !== State.Stopped) {
    await c.stop();
  }
}

function runningClient(): LanguageClient | undefined {
  if (client === undefined || !client.isRunning()) {
    void vscode.window.showWarningMessage('Intarsia: the language server is not running.');
    return undefined;
  }
  return client;
}

function executeServerCommand(c: LanguageClient, command: string, args: unknown[]): Promise<unknown> {
  return c.sendRequest(ExecuteCommandRequest.type, { command, arguments: args });
}

interface GenerateResult {
  applied?: boolean;
  reason?: string;
  function?: string | null;
}

async function generateFunction(): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  if (editor === undefined) {
    void vscode.window.showInformationMessage('Intarsia: open a file and put the cursor in a function first.');
    return;
  }
  const c = runningClient();
  if (c === undefined) {
    return;
  }
  const uri = c.code2ProtocolConverter.asUri(editor.document.uri);
  const position = c.code2ProtocolConverter.asPosition(editor.selection.active);
  const result = (await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Window, title: 'Intarsia: generating the function body' },
    () => executeServerCommand(c, 'intarsia.generateFunction', [{ uri, position }])
  )) as GenerateResult | null;
  if (!result || !result.applied) {
    const why = (result && result.reason) || 'no answer from the server';
    const name = result && result.function ? ` for ${result.function}` : '';
    void vscode.window.showWarningMessage(`Intarsia: no function body${name}: ${why}`);
  }
}

async function showStatus(): Promise<void> {
  const c = runningClient();
  if (c === undefined) {
    output.show(true);
    return;
  }
  const editor = vscode.window.activeTextEditor;
  const args = editor ? [{ uri: c.code2ProtocolConverter.asUri(editor.document.uri) }] : [];
  const st = (await executeServerCommand(c, 'intarsia.status', args)) as { [key: string]: unknown } | null;
  output.info(`status: ${JSON.stringify(st, null, 2)}`);
  const state = st && typeof st.state === 'string' ? st.state : 'unknown';
  const model = st && typeof st.model === 'string' ? ` (${st.model})` : '';
  const error = st && typeof st.error === 'string' && st.error ? `: ${st.error}` : '';
  const choice = await vscode.window.showInformationMessage(`Intarsia: ${state}${model}${error}`, 'Show Details');
  if (choice === 'Show Details') {
    output.show(true);
  }
}

async function reloadModel(): Promise<void> {
  const c = runningClient();
  if (c !== undefined) {
    await executeServerCommand(c, 'intarsia.reloadModel', []);
  }
}

async function onConfigurationChanged(e: vscode.ConfigurationChangeEvent): Promise<void> {
  if (!e.affectsConfiguration(SECTION)) {
    return;
  }
  if (e.affectsConfiguration(`${SECTION}.cursorNotifyMs`)) {
    cursorNotifier?.setDelay(cursorNotifyDelay());
  }
  if (needsRestart((s) => e.affectsConfiguration(s))) {
    output.info('intarsia.server changed: restarting the server');
    await stopClient();
    await startClient();
    return;
  }
  await sendSettings();
}

async function sendSettings(): Promise<void> {
  if (client !== undefined && client.isRunning()) {
    await client.sendNotification(DidChangeConfigurationNotification.type, {
      settings: { [SECTION]: currentServerSettings() },
    });
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel('Intarsia', { log: true });
  contributed = contributedKeys(context.extension.packageJSON);
  if (!vscode.workspace.isTrusted) {
    output.info('Restricted Mode: workspace settings that choose the engine, model, adapter or endpoint are ignored');
  }
  statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  statusItem.command = 'intarsia.showStatus';
  const notifier = new CursorNotifier(currentCursor, sendCursor, cursorNotifyDelay(), undefined, (err) =>
    output.debug(`${DID_MOVE_CURSOR_METHOD} not sent: ${String(err)}`)
  );
  cursorNotifier = notifier;
  context.subscriptions.push(
    output,
    statusItem,
    notifier,
    vscode.window.onDidChangeTextEditorSelection((e) => {
      if (e.textEditor === vscode.window.activeTextEditor) {
        notifier.moved();
      }
    }),
    vscode.window.onDidChangeActiveTextEditor(() => notifier.moved()),
    vscode.commands.registerCommand('intarsia.generateFunctionFromDocstring', generateFunction),
    vscode.commands.registerCommand('intarsia.showStatus', showStatus),
    vscode.commands.registerCommand('intarsia.reload', reloadModel),
    vscode.commands.registerCommand('intarsia.restartServer', async () => {
      await stopClient();
      await startClient();
    }),
    vscode.workspace.onDidChangeConfiguration((e) => {
      onConfigurationChanged(e).catch((err) => output.error(`settings change: ${String(err)}`));
    }),
    vscode.workspace.onDidGrantWorkspaceTrust(() => {
      output.info('the workspace is trusted now: sending its settings');
      sendSettings().catch((err) => output.error(`settings after trust: ${String(err)}`));
    }),
    { dispose: () => void stopClient() }
  );
  updateStatus(State.Starting);
  await startClient();
}

export function deactivate(): Thenable<void> | undefined {
  return client === undefined ? undefined : stopClient();
}
