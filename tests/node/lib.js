// Helpers shared by the Node peer tests (run.js: test engine, real.js: the real default model).
'use strict';

const results = [];

function check(name, ok, detail) {
  results.push({ name, ok: !!ok });
  const line = `${ok ? 'ok' : 'not ok'} ${results.length} - ${name}`;
  console.log(ok ? line : `${line}\n    ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`);
  return !!ok;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function serverCommand() {
  const raw = process.env.INTARSIA_SERVER_CMD;
  if (!raw) return ['intarsia', 'serve'];
  const cmd = JSON.parse(raw);
  if (!Array.isArray(cmd) || cmd.length === 0 || !cmd.every((x) => typeof x === 'string')) {
    throw new Error(`INTARSIA_SERVER_CMD must be a JSON array of strings, got ${raw}`);
  }
  return cmd;
}

/** Start the server (INTARSIA_SERVER_CMD) in `cwd` with a JSON-RPC connection over its stdio (not listening yet). */
function spawnServer(cwd) {
  const cp = require('child_process');
  const { createProtocolConnection, StreamMessageReader, StreamMessageWriter } = require('vscode-languageserver-protocol/node');
  const [cmd, ...args] = serverCommand();
  const child = cp.spawn(cmd, args, { cwd, stdio: ['pipe', 'pipe', 'pipe'], env: process.env });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d.toString();
    if (stderr.length > 200000) stderr = stderr.slice(-100000);
  });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  child.on('error', (e) => {
    console.log(`not ok - could not start ${cmd}: ${e.message}`);
  });
  const conn = createProtocolConnection(new StreamMessageReader(child.stdout), new StreamMessageWriter(child.stdin));
  return { child, conn, exited, stderr: () => stderr };
}

/** Print the verdict (and the server's stderr tail on failure); the exit status for it. */
function verdict(serverStderr) {
  const failed = results.filter((r) => !r.ok);
  if (failed.length) {
    console.log('--- server stderr (tail) ---\n' + serverStderr().slice(-4000));
    console.log(`FAIL: ${failed.length} of ${results.length} checks failed`);
    return 1;
  }
  console.log(`PASS: all ${results.length} checks passed`);
  return 0;
}

/** Run `main` (resolving to an exit status) under a watchdog of `timeoutMs`, then exit the process. */
function runMain(main, timeoutMs) {
  const watchdog = setTimeout(() => {
    console.log(`FAIL: the test did not finish within ${timeoutMs} ms`);
    process.exit(1);
  }, timeoutMs);
  main().then(
    (code) => {
      clearTimeout(watchdog);
      process.exit(code);
    },
    (e) => {
      clearTimeout(watchdog);
      console.log(`FAIL: ${e && e.stack}`);
      process.exit(1);
    }
  );
}

module.exports = { results, check, sleep, withTimeout, serverCommand, spawnServer, verdict, runMain };
