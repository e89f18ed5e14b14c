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

module.exports = { results, check, sleep, withTimeout, serverCommand };
