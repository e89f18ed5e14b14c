// Settings plumbing that does not need the `vscode` module (so that it can be checked with plain Node).
//
// The "intarsia" configuration section holds the server's settings (same names as the server's: engine, model,
// maxTokens, test.table, ...) and a few that configure the extension itself (`server.*`, `trace.server`,
// `cursorNotifyMs`). Only the former are sent to the server: in initializationOptions, in
// workspace/didChangeConfiguration and as the answer to the server's workspace/configuration request. The server
// warns about keys it does not know.
//
// Workspace Trust: a repository's .vscode/settings.json must not choose what the server loads or where prompts
// go. VS Code already withholds workspace values of package.json's restrictedConfigurations in Restricted Mode
// and never reads the machine-scoped `server.*` there; untrustedSection() and userValue() check it again.

import * as os from 'os';
import * as path from 'path';

/** Keys of the "intarsia" section that configure the extension only; never sent to the server. */
export const CLIENT_ONLY_KEYS: readonly string[] = ['server', 'trace', 'cursorNotifyMs'];

/**
 * Keys of the "intarsia" section that point at code, files or endpoints, or that decide where the code goes:
 * package.json's `capabilities.untrustedWorkspaces.restrictedConfigurations` without the "intarsia." prefix.
 * In a workspace that is not trusted they take the user's value (user or remote settings, else the default).
 */
export const RESTRICTED_KEYS: readonly string[] = [
  'engine', // "remote" sends the code to remoteEndpoint
  'model', // a model file or folder: its files are loaded by native code
  'adapter', // an adapter file or peft folder, loaded the same way
  'remoteEndpoint', // where the prompts (the user's code) go
  'remoteModel', // on a gateway, the model name picks who receives them
  'fimFormat', // how the code is laid out in the prompt
];

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

/** The parts of `WorkspaceConfiguration.inspect(key)` used here (its workspace and folder values are not). */
export interface Inspected {
  defaultValue?: unknown;
  globalValue?: unknown;
}

/** The user's value of a setting: user (or remote) settings, else the default; workspace values are ignored. */
export function userValue(inspected: Inspected | undefined): unknown {
  if (inspected === undefined) {
    return undefined;
  }
  const v = inspected.globalValue !== undefined ? inspected.globalValue : inspected.defaultValue;
  return v === undefined ? undefined : (JSON.parse(JSON.stringify(v)) as unknown);
}

/**
 * The server's section (serverSection()) for a workspace that is not trusted. A key keeps its value only when it
 * is contributed (`contributed`: the first name after "intarsia." of package.json's settings) and not in
 * RESTRICTED_KEYS; every other key, restricted or unknown to package.json (such as the server's aliases
 * `endpoint` and `remote_endpoint`, or a nested `intarsia`), gets the user's value or is left out, so that a
 * workspace-level value never reaches the server.
 */
export function untrustedSection(
  section: JsonObject,
  contributed: Iterable<string>,
  inspect: (key: string) => Inspected | undefined
): JsonObject {
  const open = new Set(contributed);
  for (const key of RESTRICTED_KEYS) {
    open.delete(key);
  }
  const out: JsonObject = {};
  for (const [key, value] of Object.entries(section)) {
    const v = open.has(key) ? value : userValue(inspect(key));
    if (v !== undefined) {
      out[key] = v;
    }
  }
  return out;
}

/** The first names after "intarsia." of the settings a package.json contributes ("server" for server.path). */
export function contributedKeys(packageJSON: unknown): string[] {
  const pkg = isObject(packageJSON) ? packageJSON : {};
  const contributes = isObject(pkg.contributes) ? pkg.contributes : {};
  const configuration = isObject(contributes.configuration) ? contributes.configuration : {};
  const properties = isObject(configuration.properties) ? configuration.properties : {};
  const keys = new Set<string>();
  for (const name of Object.keys(properties)) {
    if (name.startsWith('intarsia.')) {
      keys.add(name.slice('intarsia.'.length).split('.')[0]);
    }
  }
  return [...keys];
}
