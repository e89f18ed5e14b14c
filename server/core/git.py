"""The one way this project runs git: on a repository it does not trust, with every command-running key off.

Why a module of its own: Intarsia calls git on whatever folder an editor opens or `intarsia train` is pointed
at, and a repository's own configuration (.git/config, config.worktree, files it includes) can name programs
git runs on its behalf. `git ls-files --others` runs `core.fsmonitor` (checked on git 2.39: the hook fires for
`--cached` alone), `git log` runs `gpg.program` for a signed commit when `log.showSignature` is set, a `diff`
runs filter and diff drivers, writing the index runs hooks. Opening a cloned repository must never execute
code from it, so no call may go around `run_git`.

How: git is started as `git --no-pager --no-optional-locks -c KEY=VALUE ... -C ROOT SUBCOMMAND [flags]` with

* every fixed key that names a command overridden on the command line (`SAFE_CONFIG`; command-line
  configuration wins over system, global, repository and included files);
* every key of a driver or helper named by the repository (`filter.<x>.clean`, `diff.<x>.textconv`,
  `merge.<x>.driver`, `credential.<url>.helper`, ...; `DRIVER_KEYS`) found with `git config --list`, which only
  reads files, and overridden the same way; a key that cannot be written as `-c` (an '=' in its name) makes the
  call refuse;
* `--no-textconv --no-ext-diff` (and `--no-show-signature`) added to the subcommands that take them;
* no transport at all (`protocol.allow=never`, lazy fetches off), so ssh, remote helpers, proxies and credential
  helpers are never reached;
* an environment built from an allow-list (HOME, PATH, locale, temp dir; every inherited GIT_* variable, an
  inherited GIT_CONFIG_PARAMETERS included, and SSH_ASKPASS/EDITOR/PAGER dropped) plus
  GIT_CONFIG_NOSYSTEM=1, GIT_TERMINAL_PROMPT=0, GIT_OPTIONAL_LOCKS=0;
* stdin from /dev/null, its own process group (killed whole on timeout) and a timeout.

The user's global configuration is still read: it is the user's own (`safe.directory`, excludesFile), and each
key in it that runs a command is overridden like the repository's. `safe.directory` is never overridden: a
repository git refuses for its owner stays refused.

`run_git` returns a `GitResult`, or None when git is missing, times out, is killed, or dies (exit 128: not a
repository, "detected dubious ownership", a bad revision, a key that cannot be neutralized); callers then
walk the folder themselves.

Keys that name a command (git-config(1), githooks(5), gitattributes(5)) and how each is neutralized:

  core.fsmonitor=false            core.hooksPath=/dev/null (no hook can exist under it)
  core.pager=cat, --no-pager      core.editor=:, sequence.editor=: (':' is git's "no editor")
  core.askPass=  (empty: no askpass, and SSH_ASKPASS is no longer consulted)
  core.sshCommand=false, core.gitProxy=, ssh.variant=ssh, protocol.allow=never, GIT_NO_LAZY_FETCH=1
  core.alternateRefsCommand=      uploadpack.packObjectsHook=
  credential.helper=  (empty resets the helper list) and credential.<url>.helper=
  diff.external= (empty: git fails to start it rather than run anything), --no-ext-diff (never tried)
  diff.<driver>.command=, diff.<driver>.textconv= (empty: the driver is off), --no-textconv
  filter.<driver>.clean=, .smudge=, .process= (empty: the driver does nothing), .required=false
  merge.<driver>.driver=          interactive.diffFilter=
  gpg.program=, gpg.openpgp.program=, gpg.x509.program=, gpg.ssh.program=, gpg.ssh.defaultKeyCommand=,
  log.showSignature=false, --no-show-signature
  trailer.<token>.command=, trailer.<token>.cmd=
  difftool.<tool>.cmd=, mergetool.<tool>.cmd=, diff.tool=, merge.tool=, web.browser=, browser.<tool>.cmd=
  man.<tool>.cmd=, pager.<subcommand>=false
  gc.auto=0, maintenance.auto=false (no background gc and its pre-auto-gc hook), submodule.recurse=false
  remote.<name>.uploadpack / receivepack / vcs, url.<base>.insteadOf, sendemail.*, alias.*: reached only by
  transports (all refused), by send-email, or by aliases (run_git only runs built-in subcommands).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 20.0

SAFE_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.fsmonitor", "false"),
    ("core.hooksPath", os.devnull),
    ("core.pager", "cat"),
    ("core.editor", ":"),
    ("sequence.editor", ":"),
    ("core.askPass", ""),
    ("core.sshCommand", "false"),
    ("core.gitProxy", ""),
    ("ssh.variant", "ssh"),
    ("core.alternateRefsCommand", ""),
    ("uploadpack.packObjectsHook", ""),
    ("credential.helper", ""),
    ("diff.external", ""),
    ("diff.tool", ""),
    ("merge.tool", ""),
    ("interactive.diffFilter", ""),
    ("gpg.program", ""),
    ("gpg.openpgp.program", ""),
    ("gpg.x509.program", ""),
    ("gpg.ssh.program", ""),
    ("gpg.ssh.defaultKeyCommand", ""),
    ("log.showSignature", "false"),
    ("web.browser", ""),
    ("protocol.allow", "never"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    ("submodule.recurse", "false"),
)

# Keys whose subsection names a driver, helper, tool or URL: (compiled pattern over `git config --list` names,
# which come with section and variable lowercased, value that turns it off).
DRIVER_KEYS: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p, re.S), v) for p, v in (
    (r"filter\..+\.(clean|smudge|process)", ""),
    (r"filter\..+\.required", "false"),
    (r"diff\..+\.(command|textconv)", ""),
    (r"merge\..+\.driver", ""),
    (r"credential\..+\.helper", ""),
    (r"trailer\..+\.(command|cmd)", ""),
    (r"(difftool|mergetool|browser|man)\..+\.(cmd|path)", ""),
    (r"pager\.[^.]+", "false"),
))

# Flags added right after the subcommand, for the subcommands that take them.
SUBCOMMAND_FLAGS: dict[str, tuple[str, ...]] = {
    "log": ("--no-textconv", "--no-ext-diff", "--no-show-signature"),
    "show": ("--no-textconv", "--no-ext-diff", "--no-show-signature"),
    "whatchanged": ("--no-textconv", "--no-ext-diff", "--no-show-signature"),
    "diff": ("--no-textconv", "--no-ext-diff"),
    "blame": ("--no-textconv",),
    "grep": ("--no-textconv",),
}

# What git may see of our environment; everything else (GIT_*, SSH_ASKPASS, EDITOR, PAGER, LD_PRELOAD, ...)
# stays behind.
ENV_KEEP = ("HOME", "PATH", "XDG_CONFIG_HOME", "TMPDIR", "TEMP", "TMP", "USER", "LOGNAME", "USERPROFILE",
            "SYSTEMROOT", "SYSTEMDRIVE", "COMSPEC", "PATHEXT", "WINDIR")
ENV_SET = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_ATTR_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_OPTIONAL_LOCKS": "0",
    "GIT_NO_LAZY_FETCH": "1",
    "GIT_PROTOCOL_FROM_USER": "0",
    "LC_ALL": "C",  # git's messages (a refusal) in one language
}


@dataclass(frozen=True)
class GitResult:
    """A git command that ran to its end (any exit status but git's fatal 128)."""

    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def lines(self, sep: str = "\n") -> list[str]:
        """Non-empty entries of stdout split on `sep` ("\\0" for -z output); undecodable bytes kept as escapes."""
        return [p for p in self.stdout.decode("utf-8", "surrogateescape").split(sep) if p]


def git_env(base: Optional[dict] = None) -> dict[str, str]:
    """The environment git runs in (see the module docstring)."""
    base = os.environ if base is None else base
    env = {k: base[k] for k in ENV_KEEP if k in base}
    env.update(ENV_SET)
    return env


def _config_args(pairs) -> list[str]:
    out: list[str] = []
    for key, value in pairs:
        out += ["-c", f"{key}={value}"]
    return out


def _execute(argv: list[str], env: dict[str, str], timeout: float) -> Optional[tuple[int, bytes, bytes]]:
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, start_new_session=True)
    except OSError as e:  # no git on PATH, not executable
        log.debug("git cannot be started: %s", e)
        return None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (OSError, AttributeError):
            proc.kill()
        proc.communicate()
        log.warning("git %s timed out after %.0f s", argv[-1] if argv else "", timeout)
        return None
    return proc.returncode, out, err


def _driver_overrides(root: str, env: dict[str, str], timeout: float) -> Optional[list[tuple[str, str]]]:
    """Overrides for the driver/helper keys the configuration visible from `root` defines; None when one of them
    cannot be overridden on the command line or the configuration cannot be read."""
    got = _execute(["git", "--no-pager", *_config_args(SAFE_CONFIG), "-C", root, "config", "--null", "--list"],
                   env, timeout)
    if got is None:
        return None
    rc, out, _ = got
    if rc != 0:  # no configuration at all is rc 0 with empty output; anything else: do not guess
        return None
    pairs: dict[str, str] = {}
    for entry in out.decode("utf-8", "surrogateescape").split("\0"):
        key = entry.split("\n", 1)[0]
        if not key:
            continue
        for pattern, value in DRIVER_KEYS:
            if pattern.fullmatch(key):
                if "=" in key:
                    log.warning("git configuration key %r cannot be overridden: not running git in %s", key, root)
                    return None
                pairs[key] = value
                break
    return list(pairs.items())


def run_git(root: Path | str, *args: str, timeout: float = DEFAULT_TIMEOUT) -> Optional[GitResult]:
    """Run `git -C root SUBCOMMAND ARGS...` with nothing executable from the repository's configuration.

    Returns None when git is missing, times out, is killed or dies (exit status 128), see the module
    docstring; otherwise the exit status and output, for the caller to read."""
    if not args:
        raise ValueError("run_git needs a subcommand")
    root = os.fspath(root)
    env = git_env()
    drivers = _driver_overrides(root, env, timeout)
    if drivers is None:
        return None
    sub, rest = args[0], list(args[1:])
    argv = ["git", "--no-pager", "--no-optional-locks", *_config_args(SAFE_CONFIG), *_config_args(drivers),
            "-C", root, sub, *SUBCOMMAND_FLAGS.get(sub, ()), *rest]
    got = _execute(argv, env, timeout)
    if got is None:
        return None
    rc, out, err = got
    if rc == 128 or rc < 0:
        msg = err.decode("utf-8", "replace").strip().splitlines()
        if any("dubious ownership" in m for m in msg):
            log.info("git refuses %s (dubious ownership): the folder is walked instead", root)
        else:
            log.debug("git %s in %s failed: %s", sub, root, msg[0] if msg else rc)
        return None
    return GitResult(rc, out, err)


__all__ = ["GitResult", "run_git", "git_env", "SAFE_CONFIG", "DRIVER_KEYS", "SUBCOMMAND_FLAGS", "DEFAULT_TIMEOUT"]
