// Cursor notifications (`intarsia/didMoveCursor`), the parts that do not need the `vscode` module (so that they
// can be checked with plain Node: tests/node/cursor.js).
//
// The server pre-computes ("pre-warms") the suggestion for the place the user moved to while they read, before
// they type. The extension tells it where the cursor of the active editor is, a pause (`intarsia.cursorNotifyMs`,
// default 120 ms) after the primary selection last moved or the active editor changed: a trailing debounce with
// one pending timer. It is sent only while the client runs, only for documents the client has opened on the
// server (didOpen sent), and not while a didChange of the document is on its way: then the notifier looks again a
// pause later. The version is the document's version as VS Code reports it, which is the one of the last
// didChange the client sent (the client sends a change at once with incremental sync, and with full sync it sends
// pending changes before any other notification), so the server gets a version it has seen.

/** The notification's method. */
export const DID_MOVE_CURSOR_METHOD = 'intarsia/didMoveCursor';

/** Default pause (ms) after the last cursor move; `intarsia.cursorNotifyMs`. */
export const DEFAULT_CURSOR_NOTIFY_MS = 120;

/** The longest pause `intarsia.cursorNotifyMs` may ask for (package.json's maximum). */
export const MAX_CURSOR_NOTIFY_MS = 10000;

/** URI schemes of the documents the language client syncs (the documentSelector of extension.ts). */
export const SYNCED_SCHEMES: readonly string[] = ['file', 'untitled'];

/** How often the notifier looks again while the document has changes the client has not sent yet. */
export const MAX_RETRIES = 10;

export interface Position {
  line: number;
  character: number;
}

/** The params of `intarsia/didMoveCursor`: a VersionedTextDocumentIdentifier and an LSP position. */
export interface DidMoveCursorParams {
  textDocument: { uri: string; version: number };
  position: Position;
}

function isIndex(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 2147483647;
}

/**
 * The pause of `intarsia.cursorNotifyMs`: a number of milliseconds in [0, MAX_CURSOR_NOTIFY_MS] (rounded down;
 * 0 disables the notification); anything else (missing, not a finite number, negative, too large) gives the
 * default.
 */
export function cursorNotifyMs(value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > MAX_CURSOR_NOTIFY_MS) {
    return DEFAULT_CURSOR_NOTIFY_MS;
  }
  return Math.floor(value);
}

/** Whether the language client syncs documents of this URI scheme. */
export function isSyncedScheme(scheme: string): boolean {
  return SYNCED_SCHEMES.includes(scheme);
}

/**
 * The notification's params from what the language client's code2ProtocolConverter gave (uri, position) and
 * the document's version; undefined when a part is not what the LSP allows (an empty uri, a version, line or
 * character that is not a non-negative integer).
 */
export function didMoveCursorParams(
  uri: unknown,
  version: unknown,
  position: { line?: unknown; character?: unknown } | undefined
): DidMoveCursorParams | undefined {
  if (typeof uri !== 'string' || uri === '' || !isIndex(version) || position === undefined || position === null) {
    return undefined;
  }
  const { line, character } = position;
  if (!isIndex(line) || !isIndex(character)) {
    return undefined;
  }
  return { textDocument: { uri, version }, position: { line, character } };
}

export function sameParams(a: DidMoveCursorParams | undefined, b: DidMoveCursorParams | undefined): boolean {
  return (
    a !== undefined &&
    b !== undefined &&
    a.textDocument.uri === b.textDocument.uri &&
    a.textDocument.version === b.textDocument.version &&
    a.position.line === b.position.line &&
    a.position.character === b.position.character
  );
}

/**
 * The didChange notifications the language client is sending (its DidChangeTextDocument feature's
 * onAboutToSendNotification and onNotificationSent), by protocol uri: a document has unsynced changes from the
 * moment the client is about to send a change until that change (or a later one) has been sent.
 */
export class ChangesInFlight {
  private readonly versions = new Map<string, number>();

  aboutToSend(uri: string, version: number): void {
    this.versions.set(uri, Math.max(version, this.versions.get(uri) ?? version));
  }

  sent(uri: string, version: number): void {
    const waiting = this.versions.get(uri);
    if (waiting !== undefined && version >= waiting) {
      this.versions.delete(uri);
    }
  }

  closed(uri: string): void {
    this.versions.delete(uri);
  }

  has(uri: string): boolean {
    return this.versions.has(uri);
  }
}

/** What the notifier sends now: params, nothing (undefined), or 'later' (look again after a pause). */
export type CursorSnapshot = DidMoveCursorParams | undefined | 'later';

/** The state of the active editor and of the language client when the pause ends. */
export interface CursorState {
  /** The language client runs (State.Running). */
  running: boolean;
  /** The URI scheme of the active editor's document. */
  scheme: string;
  /** Its uri as the client sends it (code2ProtocolConverter.asUri). */
  uri: string;
  /** Its version as VS Code reports it now. */
  version: number;
  /** The client has opened the document on the server (its DidOpenTextDocument feature's openDocuments). */
  opened: boolean;
  /** A didChange of the document is on its way (ChangesInFlight). */
  changing: boolean;
  /** The active end of the primary selection (code2ProtocolConverter.asPosition). */
  position: Position;
}

/**
 * The decision at the end of the pause: nothing when the client does not run or does not sync the document,
 * 'later' while a change of the document is on its way to the server, else the params.
 */
export function cursorSnapshot(state: CursorState | undefined): CursorSnapshot {
  if (state === undefined || !state.running || !isSyncedScheme(state.scheme) || !state.opened) {
    return undefined;
  }
  if (state.changing) {
    return 'later';
  }
  return didMoveCursorParams(state.uri, state.version, state.position);
}

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const NODE_TIMERS: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** A trailing debounce with at most one pending timer; a delay of 0 disables it. */
export class Debouncer {
  private handle: unknown = undefined;
  private armed = false;

  constructor(
    private delayMs: number,
    private readonly timers: Timers = NODE_TIMERS
  ) {}

  get delay(): number {
    return this.delayMs;
  }

  /** Whether a call is waiting for its pause to end. */
  get pending(): boolean {
    return this.armed;
  }

  /** Call `fn` once the pause has passed without another trigger (cancels the one pending). */
  trigger(fn: () => void): void {
    this.cancel();
    if (this.delayMs <= 0) {
      return;
    }
    this.armed = true;
    this.handle = this.timers.setTimeout(() => {
      this.armed = false;
      this.handle = undefined;
      fn();
    }, this.delayMs);
  }

  cancel(): void {
    if (this.armed) {
      this.timers.clearTimeout(this.handle);
    }
    this.armed = false;
    this.handle = undefined;
  }

  /** A new pause for later triggers; 0 also cancels the pending call. */
  setDelay(ms: number): void {
    this.delayMs = ms;
    if (ms <= 0) {
      this.cancel();
    }
  }
}

/**
 * Sends `intarsia/didMoveCursor` a pause after the cursor last moved. `current()` says what to send when the
 * pause ends (CursorSnapshot); the same params as the last ones sent are not sent again, and 'later' looks again
 * after another pause (at most MAX_RETRIES times in a row).
 */
export class CursorNotifier {
  private readonly debouncer: Debouncer;
  private last: DidMoveCursorParams | undefined;
  private retries = 0;

  constructor(
    private readonly current: () => CursorSnapshot,
    private readonly send: (params: DidMoveCursorParams) => void | Promise<void>,
    delayMs: number,
    timers: Timers = NODE_TIMERS,
    private readonly onError: (err: unknown) => void = () => undefined
  ) {
    this.debouncer = new Debouncer(delayMs, timers);
  }

  get delay(): number {
    return this.debouncer.delay;
  }

  get pending(): boolean {
    return this.debouncer.pending;
  }

  /** The primary selection moved, or the active editor changed. */
  moved(): void {
    this.retries = 0;
    this.debouncer.trigger(() => this.fire());
  }

  /** A new pause (ms); 0 disables the notification and drops the pending one. */
  setDelay(ms: number): void {
    this.debouncer.setDelay(ms);
  }

  /** Forget what was sent last (a new server process knows nothing of it). */
  reset(): void {
    this.last = undefined;
  }

  dispose(): void {
    this.debouncer.cancel();
  }

  private fire(): void {
    let snapshot: CursorSnapshot;
    try {
      snapshot = this.current();
    } catch (err) {
      this.onError(err);
      return;
    }
    if (snapshot === 'later') {
      if (this.retries < MAX_RETRIES) {
        this.retries += 1;
        this.debouncer.trigger(() => this.fire());
      }
      return;
    }
    if (snapshot === undefined || sameParams(snapshot, this.last)) {
      return;
    }
    this.last = snapshot;
    const failed = (err: unknown): void => {
      if (this.last === snapshot) {
        this.last = undefined; // not sent: the same place may be sent again
      }
      this.onError(err);
    };
    try {
      const sent = this.send(snapshot);
      if (sent && typeof sent.then === 'function') {
        sent.then(undefined, failed);
      }
    } catch (err) {
      failed(err);
    }
  }
}
