"""A workspace is hostile input: its git configuration never runs a program, its symlinks never leak a file.

Each attack is planted for real and first shown to work with plain git (the control), so that these tests fail
if `server.core.git` stops neutralizing it: every planted command touches a marker file, and no marker may exist
after listing, indexing, crawling, `recent_files` and `intarsia train --dry-run`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from intarsia.server.core import files as context_mod
from intarsia.server.core import git as git_mod
from intarsia.server.core.context import ContextProvider, RepoIndex
from intarsia.server.core.files import list_files, read_text_file
from intarsia.server.core.git import run_git
from intarsia.server.core.documents import Snapshot

pytestmark = pytest.mark.skipif(subprocess.run(["sh", "-c", "command -v git"], capture_output=True).returncode,
                                reason="git is not installed")

HOOKS = ("pre-commit", "post-commit", "post-checkout", "post-index-change", "reference-transaction",
         "pre-auto-gc", "post-merge", "pre-push")

SECRET = "zq-7Hf2-ultraviolet-wombat-secret-91c3"

SHOP = '''"""Prices of the shop."""


def shop_price(amount, rate):
    """Price with tax."""
    total = amount * (1 + rate)
    return round(total, 2)


def shop_discount(price, percent):
    return price * (1 - percent / 100)
'''

CART = '''"""The cart."""


class ShopCart:
    def __init__(self):
        self.items = []

    def add_item(self, name, qty=1):
        self.items.append((name, qty))
        return len(self.items)
'''

HELPER = '''"""Formatting helpers."""

import textwrap


def indent_block(text, spaces=4):
    return textwrap.indent(text, " " * spaces)


def headline(title):
    line = "=" * len(title)
    return f"{line}\\n{title}\\n{line}"
'''

# What lies outside the workspace: code that scores high for the query below, around a unique secret.
OUTSIDE = f'''def shop_price_secret_key(amount, rate):
    """Price with tax, signed."""
    api_key = "{SECRET}"
    return shop_price(amount, rate), api_key
'''

QUERY = "from shop import shop_price\n\ntotal = shop_price(amount, rate)\nkey = shop_price_secret_key(amount, rate)\n"


@pytest.fixture(autouse=True)
def clean_home(tmp_path, monkeypatch):
    """No global git configuration of the machine's user (a safe.directory, a helper) changes the outcome."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for k in [k for k in os.environ if k.startswith("GIT_")]:
        monkeypatch.delenv(k)
    return home


def _git(repo: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    """Plain git, as an attacker expects a tool to call it (the controls)."""
    kw.setdefault("input", b"")
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=60, **kw)


def _script(path: Path, marker: Path, passthrough: bool = True) -> str:
    path.write_text(f"#!/bin/sh\ntouch '{marker}'\n" + ("cat\n" if passthrough else "exit 0\n"))
    path.chmod(0o755)
    return str(path)


def _commit(repo: Path, msg: str) -> None:
    assert _git(repo, "add", "-A").returncode == 0
    assert _git(repo, "commit", "-qm", msg).returncode == 0


def _signed_commit(repo: Path) -> None:
    """A commit carrying a (fake) PGP signature: `git log` with log.showSignature runs gpg.program on it."""
    tree = _git(repo, "rev-parse", "HEAD^{tree}").stdout.decode().strip()
    parent = _git(repo, "rev-parse", "HEAD").stdout.decode().strip()
    body = (f"tree {tree}\nparent {parent}\nauthor t <t@t> 1700000000 +0000\ncommitter t <t@t> 1700000000 +0000\n"
            "gpgsig -----BEGIN PGP SIGNATURE-----\n \n iQEzBAABCAAdFiEE\n -----END PGP SIGNATURE-----\n\nsigned\n")
    sha = _git(repo, "hash-object", "-t", "commit", "-w", "--stdin", input=body.encode()).stdout.decode().strip()
    assert _git(repo, "update-ref", "HEAD", sha).returncode == 0


def _planted(tmp_path: Path) -> tuple[Path, Path]:
    """(repository, marker folder): a repository whose configuration runs a marker-touching script from every
    key that names a command."""
    markers = tmp_path / "markers"
    markers.mkdir()
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for h in HOOKS:
        _script(hooks / h, markers / f"hook-{h}", passthrough=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "shop.py").write_text(SHOP)
    (repo / "cart.py").write_text(CART)
    (repo / ".gitattributes").write_text("* filter=evil diff=evil merge=evil\n")
    (repo / ".gitignore").write_text("ignored.py\n")
    assert subprocess.run(["git", "init", "-q", str(repo)]).returncode == 0
    _git(repo, "config", "user.email", "t@t")
    _git(repo, "config", "user.name", "t")
    _commit(repo, "init")
    (repo / "shop.py").write_text(SHOP + "\n\nSCALE = 3\n")
    _commit(repo, "scale")
    _signed_commit(repo)
    s = lambda name: _script(bin_ / f"{name}.sh", markers / name)  # noqa: E731
    for key, value in [
        ("core.fsmonitor", s("fsmonitor")), ("core.hooksPath", str(hooks)), ("core.pager", s("pager")),
        ("core.editor", s("editor")), ("sequence.editor", s("seqeditor")), ("core.askPass", s("askpass")),
        ("core.sshCommand", s("ssh")), ("core.alternateRefsCommand", s("altrefs")),
        ("credential.helper", s("credential")), ("filter.evil.clean", s("clean")),
        ("filter.evil.smudge", s("smudge")), ("filter.evil.process", s("process")),
        ("diff.external", s("external")), ("diff.evil.textconv", s("textconv")),
        ("diff.evil.command", s("diffcmd")), ("merge.evil.driver", s("merge")), ("log.showSignature", "true"),
        ("gpg.program", s("gpg")), ("pager.log", s("pagerlog")), ("interactive.diffFilter", s("difffilter")),
    ]:
        assert _git(repo, "config", key, value).returncode == 0
    (repo / "shop.py").write_text(SHOP + "\n\nSCALE = 4\n")  # a dirty tracked file: a refresh would run filters
    (repo / "new_module.py").write_text(HELPER)  # untracked, not ignored
    (repo / "ignored.py").write_text("IGNORED = True\n")
    return repo, markers


def _fired(markers: Path) -> list[str]:
    return sorted(p.name for p in markers.iterdir())


def _clear(markers: Path) -> None:
    for p in markers.iterdir():
        p.unlink()


def test_planted_configuration_fires_with_plain_git(tmp_path):
    """The control: on this machine's git the planted keys do run code when git is called the plain way."""
    repo, markers = _planted(tmp_path)
    _git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    assert "fsmonitor" in _fired(markers)
    _clear(markers)
    _git(repo, "log", "-n3", "--name-only", "--format=")
    assert "gpg" in _fired(markers)
    _clear(markers)
    _git(repo, "diff")
    assert {"fsmonitor", "process"} <= set(_fired(markers))
    _clear(markers)
    _git(repo, "log", "-p", "-n3")
    assert "textconv" in _fired(markers)
    _clear(markers)
    _git(repo, "status")
    assert "hook-post-index-change" in _fired(markers)


def test_planted_configuration_never_runs(tmp_path):
    repo, markers = _planted(tmp_path)
    expected = {".gitattributes", ".gitignore", "shop.py", "cart.py", "new_module.py"}
    assert set(list_files(repo)) == expected  # tracked + untracked, not the ignored one
    index = RepoIndex(repo)
    index.build()
    assert index.ready and set(index._bm25.by_path) == expected
    assert index.update_file(repo / "shop.py")
    assert _fired(markers) == []
    for args in [("log", "-p", "-n3"), ("show",), ("diff",), ("diff", "HEAD~2", "HEAD"), ("status",),
                 ("blame", "shop.py"), ("grep", "shop"), ("whatchanged", "-n2"), ("fetch", "ssh://example.invalid/r")]:
        run_git(repo, *args)
    assert _fired(markers) == []


def test_training_crawl_and_dry_run_never_run_the_configuration(tmp_path):
    pytest.importorskip("detect_secrets")
    from intarsia.training.crawl import crawl, recent_files

    repo, markers = _planted(tmp_path)
    res = crawl(repo)
    assert {f.rel for f in res.files} == {"shop.py", "cart.py", "new_module.py"}
    assert recent_files(repo, 2) == ["shop.py"]  # the signed commit changes nothing; "scale" touched shop.py
    assert set(recent_files(repo, 3)) == {"shop.py", "cart.py", ".gitattributes", ".gitignore"}
    assert _fired(markers) == []
    env = {**os.environ, "INTARSIA_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "intarsia.server.cli", "train", str(repo), "--dry-run", "--json"],
                          capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert _fired(markers) == []


def test_inherited_git_environment_is_dropped(tmp_path, monkeypatch):
    """GIT_CONFIG_PARAMETERS (set by a parent git, e.g. in a hook), GIT_DIR, GIT_EXTERNAL_DIFF never reach git."""
    markers = tmp_path / "markers"
    markers.mkdir()
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text(SHOP)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "other.py").write_text(CART)
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    assert _git(repo, "ls-files", "--others").stdout == b"other.py\n"  # the control: the environment steers git
    fsm = _script(tmp_path / "fsm.sh", markers / "fsmonitor")
    ext = _script(tmp_path / "ext.sh", markers / "external")
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", f"'core.fsmonitor'='{fsm}'")
    monkeypatch.setenv("GIT_EXTERNAL_DIFF", ext)
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "elsewhere-index"))
    _git(repo, "ls-files", "--others")
    assert "fsmonitor" in _fired(markers)  # the control
    _clear(markers)
    assert list_files(repo) == ["a.py"]
    run_git(repo, "diff")
    assert _fired(markers) == []
    assert not (tmp_path / "elsewhere-index").exists()


def test_a_key_that_cannot_be_overridden_makes_git_refuse(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text(SHOP)
    (repo / "skipped.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text("skipped.py\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    assert _git(repo, "config", "credential.https://h.invalid/?a=b.helper", "/bin/true").returncode == 0
    assert run_git(repo, "ls-files") is None
    assert list_files(repo) == [".gitignore", "a.py"]  # the walk, honouring .gitignore


# ---------------------------------------------------------------------------------------------- git missing


def _plain_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "shop.py").write_text(SHOP)
    (repo / "cart.py").write_text(CART)
    (repo / "notes.py").write_text("NOTES = 1\n")
    (repo / ".gitignore").write_text("notes.py\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def test_without_git_the_folder_is_walked(tmp_path, monkeypatch):
    repo = _plain_repo(tmp_path)
    empty = tmp_path / "nogit"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert run_git(repo, "ls-files") is None
    assert list_files(repo) == [".gitignore", "cart.py", "pkg/shop.py"]
    from intarsia.training.crawl import _is_git, recent_files

    assert not _is_git(repo) and recent_files(repo, 3) == []


def test_a_refusing_git_falls_back_to_the_walk(tmp_path, monkeypatch):
    repo = _plain_repo(tmp_path)
    monkeypatch.setattr(context_mod, "run_git", lambda *a, **k: None)  # what a refusal returns
    assert list_files(repo) == [".gitignore", "cart.py", "pkg/shop.py"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to hand the repo away")
def test_dubious_ownership_is_a_refusal(tmp_path):
    repo = _plain_repo(tmp_path)
    for p in [repo, *repo.rglob("*")]:
        os.lchown(p, 65534, 65534)
    assert _git(repo, "ls-files").returncode == 128  # the control: git refuses this repository
    assert run_git(repo, "ls-files") is None
    assert list_files(repo) == [".gitignore", "cart.py", "pkg/shop.py"]


def test_a_hanging_git_is_killed(tmp_path, monkeypatch):
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "git").write_text("#!/bin/sh\nsleep 30\n")
    (fake / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    assert run_git(tmp_path, "ls-files", timeout=0.5) is None


def test_git_runs_with_the_safe_flags_and_a_clean_environment(tmp_path, monkeypatch):
    fake = tmp_path / "fakebin"
    fake.mkdir()
    log = tmp_path / "calls"
    (fake / "git").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{log}"\necho ---- >> "{log}"\n'
                              f'env >> "{log}"\necho ==== >> "{log}"\n')
    (fake / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("GIT_DIR", "/somewhere/else")
    monkeypatch.setenv("SSH_ASKPASS", "/evil/askpass")
    got = run_git(tmp_path, "log", "-n1")
    assert got is not None and got.ok
    calls = [c for c in log.read_text().split("====\n") if c.strip()]
    assert len(calls) == 2  # reading the configuration, then the command
    args, env = calls[-1].split("----\n")
    args = args.splitlines()
    for key, value in git_mod.SAFE_CONFIG:
        assert f"{key}={value}" in args
    assert {"--no-pager", "--no-optional-locks", "--no-textconv", "--no-ext-diff", "--no-show-signature"} <= set(args)
    assert args[args.index("log") + 1:][-1] == "-n1"
    env = dict(line.split("=", 1) for line in env.splitlines() if "=" in line)
    assert "GIT_DIR" not in env and "SSH_ASKPASS" not in env
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_OPTIONAL_LOCKS"] == "0"
    assert env["HOME"] == os.environ["HOME"]


# ---------------------------------------------------------------------------------------------- symlinks


def _snapshot(text: str) -> Snapshot:
    return Snapshot(uri="file:///ws/main.py", version=1, text=text, offset=len(text), language_id="python",
                    language=None, path="main.py")


def _count(s: str) -> int:
    return max(1, len(s) // 4)


def _linked_workspace(tmp_path: Path, git: bool) -> Path:
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "secret.py").write_text(OUTSIDE)
    (outside / "deep" / "more.py").write_text(OUTSIDE.replace("shop_price_secret_key", "shop_price_deep_key"))
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "shop.py").write_text(SHOP)
    (ws / "cart.py").write_text(CART)
    (ws / "sub" / "helper.py").write_text(HELPER)
    (ws / "alias.py").symlink_to("cart.py")  # stays inside: may be read
    (ws / "link.py").symlink_to(outside / "secret.py")
    (ws / "relative_link.py").symlink_to(Path("..") / "outside" / "secret.py")
    (ws / "linkdir").symlink_to(outside)
    if git:
        subprocess.run(["git", "init", "-q", str(ws)], check=True)
        _git(ws, "config", "user.email", "t@t")
        _git(ws, "config", "user.name", "t")
        (ws / "swapped").mkdir()
        (ws / "swapped" / "secret.py").write_text("SWAPPED = 1\n")
        _commit(ws, "init")  # the symlinks are committed as links
        # A tracked path whose folder is replaced by a link leaving the workspace: the index still lists it.
        (ws / "swapped" / "secret.py").unlink()
        (ws / "swapped").rmdir()
    (ws / "swapped").symlink_to(outside)
    return ws


@pytest.mark.parametrize("git", [True, False])
def test_symlinks_leaving_the_workspace_are_not_read(tmp_path, git):
    ws = _linked_workspace(tmp_path, git)
    assert SECRET in (ws / "link.py").read_text()  # the control: the links do reach the secret
    files = list_files(ws)
    assert {"shop.py", "cart.py", "sub/helper.py", "alias.py"} <= set(files)
    assert not {f for f in files if f.startswith(("link", "relative_link", "swapped"))}
    assert read_text_file(ws / "link.py", root=ws) is None
    assert read_text_file(ws / "alias.py", root=ws) == CART
    index = RepoIndex(ws)
    index.build()
    chunks = [c for cs in index._bm25.by_path.values() for c in cs]
    assert chunks and not any(SECRET in c.text for c in chunks)
    for p in ("link.py", "relative_link.py", "linkdir/secret.py", "swapped/secret.py"):
        assert not index.update_file(ws / p)
    assert index.rel(ws / "alias.py") == "cart.py"
    chunks = [c for cs in index._bm25.by_path.values() for c in cs]
    assert not any(SECRET in c.text for c in chunks)
    files = ContextProvider(index).select(_snapshot(QUERY), 4000, _count)
    assert files and all(SECRET not in f.content and "shop_price_secret_key" not in f.content for f in files)

    # The same secret inside the workspace would be chosen: the test can fail.
    (ws / "inside_secret.py").write_text(OUTSIDE)
    index.update_file(ws / "inside_secret.py")
    files = ContextProvider(index).select(_snapshot(QUERY), 4000, _count)
    assert any(SECRET in f.content for f in files)


@pytest.mark.parametrize("git", [True, False])
def test_training_crawl_reports_symlinks_and_reads_none(tmp_path, git):
    pytest.importorskip("detect_secrets")
    from intarsia.training.crawl import crawl

    ws = _linked_workspace(tmp_path, git)
    res = crawl(ws)
    reasons = dict(res.skipped)
    assert {f.rel for f in res.files} == {"shop.py", "cart.py", "sub/helper.py"}
    assert not any(SECRET in f.text for f in res.files)
    assert reasons["link.py"] == "symlink: points outside the repository"
    assert reasons["relative_link.py"] == "symlink: points outside the repository"
    assert reasons["alias.py"] == "symlink: not followed"
    assert reasons.get("linkdir") or reasons.get("linkdir/")
    assert reasons[next(k for k in reasons if k.startswith("linkdir"))].startswith("symlink:")
    if git:
        assert reasons["swapped/secret.py"] == "symlink: under a folder that points outside the repository"
