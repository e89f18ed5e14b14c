#!/usr/bin/env node
// Checks of the VS Code extension's cursor notification module (editors/vscode/src/cursor.ts, compiled to
// out/cursor.js by `tsc -p .` in editors/vscode): the intarsia.cursorNotifyMs value, the params of
// `intarsia/didMoveCursor`, the decision when the pause ends (client running, document opened, no change on its
// way), the trailing debounce with one pending timer (a fake clock), and the notifier on top of it.
//
//   node tests/node/cursor.js [path/to/out/cursor.js]
//
// Prints one line per check and a verdict; exits 0 when every check passed, 1 otherwise.
'use strict';

const path = require('path');
const { check, verdict, runMain } = require('./lib');

const modulePath = path.resolve(
  process.argv[2] || path.join(__dirname, '..', '..', 'editors', 'vscode', 'out', 'cursor.js')
);
const c = require(modulePath);

/** A fake clock: setTimeout/clearTimeout that run when advance() passes their time; counts live timers. */
function fakeClock() {
  let now = 0;
  let next = 1;
  const timers = new Map();
  let maxLive = 0;
  return {
    timers: {
      setTimeout(fn, ms) {
        const id = next++;
        timers.set(id, { at: now + ms, fn });
        maxLive = Math.max(maxLive, timers.size);
        return id;
      },
      clearTimeout(id) {
        timers.delete(id);
      },
    },
    advance(ms) {
      const end = now + ms;
      for (;;) {
        let first;
        for (const [id, t] of timers) {
          if (t.at <= end && (first === undefined || t.at < timers.get(first).at)) first = id;
        }
        if (first === undefined) break;
        const t = timers.get(first);
        timers.delete(first);
        now = t.at;
        t.fn();
      }
      now = end;
    },
    get now() {
      return now;
    },
    get live() {
      return timers.size;
    },
    get maxLive() {
      return maxLive;
    },
  };
}

const eq = (a, b) => JSON.stringify(a) === JSON.stringify(b);

function params(line, character, version = 1, uri = 'file:///ws/main.py') {
  return { textDocument: { uri, version }, position: { line, character } };
}

async function main() {
  // ---- constants and the setting
  check('the method is intarsia/didMoveCursor', c.DID_MOVE_CURSOR_METHOD === 'intarsia/didMoveCursor',
    c.DID_MOVE_CURSOR_METHOD);
  check('the default pause is 120 ms', c.DEFAULT_CURSOR_NOTIFY_MS === 120, c.DEFAULT_CURSOR_NOTIFY_MS);
  const ms = [undefined, null, 0, 250, 250.7, 10000, -1, 10001, NaN, Infinity, '200', {}].map(c.cursorNotifyMs);
  check('cursorNotifyMs: 0 disables, whole ms in [0, 10000], anything else the default',
    eq(ms, [120, 120, 0, 250, 250, 10000, 120, 120, 120, 120, 120, 120]), ms);

  // ---- schemes the client syncs (extension.ts's documentSelector)
  check('file and untitled documents are synced', c.isSyncedScheme('file') && c.isSyncedScheme('untitled'));
  check('other schemes are not',
    !['git', 'output', 'vscode-notebook-cell', 'vscode-userdata', ''].some(c.isSyncedScheme));

  // ---- params
  const p = c.didMoveCursorParams('file:///ws/a%20b.py', 7, { line: 3, character: 14 });
  check('the params are {textDocument: {uri, version}, position: {line, character}} and nothing else',
    JSON.stringify(p) ===
      '{"textDocument":{"uri":"file:///ws/a%20b.py","version":7},"position":{"line":3,"character":14}}', p);
  const extra = c.didMoveCursorParams('file:///x.py', 1, { line: 0, character: 0, extra: 1 });
  check('other fields of the converter\'s position are not sent', eq(extra.position, { line: 0, character: 0 }), extra);
  const bad = [
    ['', 1, { line: 0, character: 0 }],
    [undefined, 1, { line: 0, character: 0 }],
    ['file:///x.py', -1, { line: 0, character: 0 }],
    ['file:///x.py', 1.5, { line: 0, character: 0 }],
    ['file:///x.py', '1', { line: 0, character: 0 }],
    ['file:///x.py', 1, { line: -1, character: 0 }],
    ['file:///x.py', 1, { line: 0, character: 0.5 }],
    ['file:///x.py', 1, { line: 0 }],
    ['file:///x.py', 1, undefined],
    ['file:///x.py', 1, null],
  ].map((a) => c.didMoveCursorParams(...a));
  check('no params from a bad uri, version or position', bad.every((x) => x === undefined), bad);
  check('sameParams compares uri, version, line and character',
    c.sameParams(params(1, 2), params(1, 2)) && !c.sameParams(params(1, 2), params(1, 3)) &&
      !c.sameParams(params(1, 2), params(2, 2)) && !c.sameParams(params(1, 2, 1), params(1, 2, 2)) &&
      !c.sameParams(params(1, 2), params(1, 2, 1, 'file:///other.py')) && !c.sameParams(params(1, 2), undefined) &&
      !c.sameParams(undefined, undefined));

  // ---- didChange notifications on their way
  const inflight = new c.ChangesInFlight();
  check('no change on its way at first', !inflight.has('file:///a.py'));
  inflight.aboutToSend('file:///a.py', 3);
  inflight.aboutToSend('file:///a.py', 4);
  check('about to send: a change is on its way', inflight.has('file:///a.py') && !inflight.has('file:///b.py'));
  inflight.sent('file:///a.py', 3);
  check('still on its way until the last one announced is sent', inflight.has('file:///a.py'));
  inflight.sent('file:///a.py', 4);
  check('none once it is sent', !inflight.has('file:///a.py'));
  inflight.aboutToSend('file:///a.py', 5);
  inflight.closed('file:///a.py');
  check('a closed document has none', !inflight.has('file:///a.py'));

  // ---- the decision when the pause ends
  const state = {
    running: true, scheme: 'file', uri: 'file:///ws/main.py', version: 5, opened: true, changing: false,
    position: { line: 2, character: 9 },
  };
  check('running, opened, no change on its way: the params with the document\'s version',
    eq(c.cursorSnapshot(state), params(2, 9, 5)), c.cursorSnapshot(state));
  check('not running: nothing', c.cursorSnapshot({ ...state, running: false }) === undefined);
  check('a scheme the client does not sync: nothing', c.cursorSnapshot({ ...state, scheme: 'git' }) === undefined);
  check('a document the client has not opened: nothing', c.cursorSnapshot({ ...state, opened: false }) === undefined);
  check('a change on its way: later', c.cursorSnapshot({ ...state, changing: true }) === 'later');
  check('not running beats a change on its way', c.cursorSnapshot({ ...state, running: false, changing: true }) ===
    undefined);
  check('no editor: nothing', c.cursorSnapshot(undefined) === undefined);
  check('a bad position: nothing', c.cursorSnapshot({ ...state, position: { line: -1, character: 0 } }) === undefined);

  // ---- the debouncer (fake clock)
  {
    const clock = fakeClock();
    const d = new c.Debouncer(120, clock.timers);
    const calls = [];
    const fn = () => calls.push(clock.now);
    d.trigger(fn);
    clock.advance(50);
    d.trigger(fn);
    clock.advance(50);
    d.trigger(fn);
    check('pending while the pause runs', d.pending && calls.length === 0, { pending: d.pending, calls });
    clock.advance(119);
    check('nothing before the pause after the last trigger has passed', calls.length === 0, calls);
    clock.advance(1);
    check('one call, 120 ms after the last trigger (trailing)', eq(calls, [220]), calls);
    check('never more than one pending timer', clock.maxLive === 1 && clock.live === 0,
      { max: clock.maxLive, live: clock.live });
    check('not pending after the call', !d.pending);
    clock.advance(1000);
    check('no further call', calls.length === 1, calls);
    d.trigger(fn);
    d.cancel();
    clock.advance(1000);
    check('cancel drops the pending call', calls.length === 1 && clock.live === 0, calls);
    d.trigger(fn);
    d.setDelay(0);
    clock.advance(1000);
    check('setDelay(0) drops the pending call', calls.length === 1 && clock.live === 0 && !d.pending, calls);
    d.trigger(fn);
    check('delay 0: no timer at all', !d.pending && clock.live === 0);
    clock.advance(1000);
    check('delay 0: no call', calls.length === 1, calls);
    d.setDelay(30);
    d.trigger(fn);
    clock.advance(30);
    check('a new delay applies to later triggers', calls.length === 2 && calls[1] === clock.now, calls);
  }

  // ---- the notifier (fake clock): trailing, current state at the end of the pause, no repeats
  {
    const clock = fakeClock();
    const sent = [];
    const errors = [];
    let snap = params(0, 0);
    let result;
    const n = new c.CursorNotifier(() => snap, (x) => {
      sent.push({ at: clock.now, params: x });
      return result;
    }, 120, clock.timers, (e) => errors.push(String(e)));
    check('the notifier has the given pause', n.delay === 120, n.delay);
    n.moved();
    snap = params(0, 1);
    clock.advance(40);
    n.moved();
    snap = params(0, 2);
    clock.advance(40);
    n.moved();
    snap = params(3, 4);
    clock.advance(119);
    check('moves less than a pause apart: nothing yet', sent.length === 0, sent);
    clock.advance(1);
    check('one notification a pause after the last move, for where the cursor is then',
      sent.length === 1 && sent[0].at === 200 && eq(sent[0].params, params(3, 4)), sent);
    n.moved();
    clock.advance(500);
    check('the same place and version are not sent again', sent.length === 1, sent);
    snap = params(3, 5);
    n.moved();
    clock.advance(120);
    check('a new place is sent', sent.length === 2 && eq(sent[1].params, params(3, 5)), sent);
    snap = params(3, 5, 2);
    n.moved();
    clock.advance(120);
    check('a new version at the same place is sent', sent.length === 3 && eq(sent[2].params, params(3, 5, 2)), sent);
    n.reset();
    n.moved();
    clock.advance(120);
    check('after reset() (a new server) the same place is sent again', sent.length === 4, sent);

    // nothing to send
    snap = undefined;
    n.moved();
    clock.advance(1000);
    check('no editor, not running or not synced: nothing is sent', sent.length === 4 && clock.live === 0, sent);

    // unsynced changes: look again after a pause, send once they are synced
    snap = 'later';
    n.moved();
    clock.advance(120);
    check('unsynced changes: nothing sent, one timer pending again', sent.length === 4 && n.pending &&
      clock.live === 1, { sent, live: clock.live });
    snap = params(4, 0, 3);
    clock.advance(120);
    check('sent a pause later, once the client synced the change', sent.length === 5 &&
      eq(sent[4].params, params(4, 0, 3)) && sent[4].at === clock.now, sent);
    snap = 'later';
    n.moved();
    clock.advance(120 * (c.MAX_RETRIES + 5));
    check(`changes that stay unsynced: at most ${c.MAX_RETRIES} looks, then nothing pending`,
      sent.length === 5 && !n.pending && clock.live === 0, { live: clock.live });

    // a failed send: logged, and the place may be sent again
    snap = params(6, 1, 3);
    result = Promise.reject(new Error('Client is not running'));
    n.moved();
    clock.advance(120);
    await new Promise((r) => setImmediate(r));
    check('a rejected send goes to onError', errors.length === 1 && errors[0].includes('not running'), errors);
    result = undefined;
    n.moved();
    clock.advance(120);
    check('and the same place is sent again after it failed', sent.length === 7 &&
      eq(sent[6].params, params(6, 1, 3)), sent);
    const failing = new c.CursorNotifier(() => {
      throw new Error('no converter');
    }, () => undefined, 10, clock.timers, (e) => errors.push(String(e)));
    failing.moved();
    clock.advance(10);
    check('an exception while reading the state goes to onError', errors.length === 2 &&
      errors[1].includes('no converter'), errors);

    // disabled, and disposed
    n.setDelay(0);
    snap = params(9, 9, 9);
    n.moved();
    clock.advance(1000);
    check('setDelay(0) (intarsia.cursorNotifyMs = 0): nothing is sent', sent.length === 7 && clock.live === 0, sent);
    n.setDelay(120);
    n.moved();
    n.dispose();
    clock.advance(1000);
    check('dispose() drops the pending notification', sent.length === 7 && clock.live === 0, sent);
  }

  // ---- the notifier with Node's own timers
  {
    const sent = [];
    const n = new c.CursorNotifier(() => params(1, 1), (x) => {
      sent.push({ at: Date.now(), params: x });
    }, 40);
    const t0 = Date.now();
    n.moved();
    n.moved();
    n.moved();
    await new Promise((r) => setTimeout(r, 300));
    check('with real timers: one notification, not before the pause', sent.length === 1 && sent[0].at - t0 >= 38,
      sent.map((s) => s.at - t0));
    n.dispose();
  }

  return verdict(() => '');
}

runMain(main, 30000);
