// Settings plumbing that does not need the `vscode` module (so that it can be checked with plain Node).
//
// The "intarsia" configuration section holds the server's settings (same names as the server's: engine, model,
// maxTokens, test.table, ...) and a few that configure the extension itself (`server.*`, `trace.server`). Only
// the former are sent to the server: in initializationOptions, in workspace/didChangeConfiguration and as the
// answer to the server's workspace/configuration request. The server warns about keys it does not know.

import * as os from 'os';
import * as path from 'path';

/** Keys of the "intarsia" section that configure the extension only; never sent to the server. */
export const CLIENT_ONLY_KEYS: readonly string[] = ['server', 'trace'];

export type JsonObject = { [key: string]: unknown };

function isObject(v: unknown): v is JsonObject {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/**
 * The server's part of an "intarsia" section: a plain JSON copy (functions such as those of a
 * `WorkspaceConfiguration` dropped) without the client-only keys. Anything but an object gives `{}`.
 */
export function serverSection(section: unknown): JsonObject {
  if (!isObject(section)) {
    return {};
  }
  const plain = JSON.parse(JSON.stringify(section)) as unknown;
  if (!isObject(plain)) {
    return {};
  }
  for (const key of CLIENT_ONLY_KEYS) {
    delete plain[key];
  }
  return plain;
}

export interface ServerLaunch {
  command: string;
  args: string[];
  env: { [name: string]: string };
}

function expandHome(p: string): string {
  if (p === '~') {
    return os.homedir();
  }
  if (p.startsWith('~/') || p.startsWith('~' + path.sep)) {
    return path.join(os.homedir(), p.slice(2));
  }
  return p;
}

/**
 * How to start the server, from the `server` object of the section ({path, args, env}); bad or missing values
 * fall back to `intarsia serve`. Problems are returned for the log.
 */
export function serverLaunch(server: unknown): { launch: ServerLaunch; problems: string[] } {
  const problems: string[] = [];
  const s = isObject(server) ? server : {};
  let command = 'intarsia';
  if (typeof s.path === 'string' && s.path.trim() !== '') {
    command = expandHome(s.path.trim());
  } else if (s.path !== undefined && s.path !== null && s.path !== '') {
    problems.push('intarsia.server.path must be a string; using "intarsia"');
  }
  let args = ['serve'];
  if (Array.isArray(s.args) && s.args.every((a) => typeof a === 'string')) {
    args = s.args as string[];
  } else if (s.args !== undefined && s.args !== null) {
    problems.push('intarsia.server.args must be a list of strings; using ["serve"]');
  }
  const env: { [name: string]: string } = {};
  if (isObject(s.env)) {
    for (const [k, v] of Object.entries(s.env)) {
      if (typeof v === 'string') {
        env[k] = v;
      } else {
        problems.push(`intarsia.server.env.${k} must be a string; ignored`);
      }
    }
  } else if (s.env !== undefined && s.env !== null) {
    problems.push('intarsia.server.env must be an object of strings; ignored');
  }
  return { launch: { command, args, env }, problems };
}

/** The configuration section names whose change needs a new server process. */
export function needsRestart(affects: (section: string) => boolean): boolean {
  return affects('intarsia.server');
}
