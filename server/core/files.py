"""Which files of a workspace may be read, and their text: the one place that touches the workspace's disk.

Two things make this its own module. Listing asks git (tracked files plus untracked ones .gitignore allows), and
a repository's configuration can name programs git runs (fsmonitor, filters, hooks, …): every git call goes
through `core.git`, which turns those off, and a plain walk honouring the top-level .gitignore stands in when git
is missing or refuses. And a workspace can hold symlinks to anything the user can read (~/.ssh, a secrets file):
a path whose real path leaves the workspace is never listed nor read, and a symlinked folder is never walked.

Repository context (`core.context`) indexes what `list_files` returns; training's crawl reuses the listing and
the skip rules, and says why it skips each file.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path
from typing import Optional, Sequence

from .git import run_git

MAX_FILE_BYTES = 512_000
MAX_FILES = 20_000

VENDORED_DIRS = frozenset({
    ".git", ".hg", ".svn", "node_modules", "bower_components", "vendor", "third_party", "third-party",
    "__pycache__", ".venv", "venv", "env", ".env", ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache",
    "site-packages", "dist", "build", "target", "out", ".next", ".nuxt", ".gradle", ".idea", ".vscode",
    ".cache", "coverage", ".eggs",
})
SKIP_SUFFIXES = frozenset({
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".svg", ".webp", ".pdf", ".zip", ".gz", ".tgz", ".bz2",
    ".xz", ".7z", ".tar", ".jar", ".war", ".class", ".so", ".dylib", ".dll", ".exe", ".o", ".a", ".lib",
    ".pyc", ".pyo", ".whl", ".onnx", ".gguf", ".bin", ".safetensors", ".pt", ".pth", ".npy", ".npz", ".pkl",
    ".db", ".sqlite", ".woff", ".woff2", ".ttf", ".otf", ".eot", ".mp3", ".mp4", ".wav", ".mov", ".avi",
    ".lock", ".min.js", ".min.css", ".map", ".ipynb", ".csv", ".tsv", ".parquet", ".jsonl", ".log",
})
SKIP_NAMES = frozenset({"package-lock.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock", "Cargo.lock",
                        "go.sum", "uv.lock", "Pipfile.lock", "composer.lock"})


def _gitignore_patterns(root: Path) -> list[str]:
    try:
        lines = (root / ".gitignore").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#") and not ln.startswith("!")]


def _ignored(rel: str, is_dir: bool, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    for p in patterns:
        dir_only = p.endswith("/")
        p = p.rstrip("/")
        if dir_only and not is_dir:
            continue
        anchored = p.startswith("/") or "/" in p
        p = p.lstrip("/")
        if anchored:
            if fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, p + "/*"):
                return True
        elif fnmatch.fnmatch(name, p):
            return True
    return False


def skip_path(rel: str) -> bool:
    """Vendored folders, lock files and binary/data extensions."""
    parts = rel.split("/")
    if any(p in VENDORED_DIRS for p in parts[:-1]):
        return True
    name = parts[-1].lower()
    if parts[-1] in SKIP_NAMES:
        return True
    return any(name.endswith(s) for s in SKIP_SUFFIXES)


def _is_within(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def inside_root(root: Path | str, path: Path | str) -> bool:
    """Whether `path`, every symlink on the way resolved, is `root` (resolved too) or below it."""
    return _is_within(os.path.realpath(path), os.path.realpath(root))


class Confinement:
    """Tells whether workspace-relative paths stay inside the root once symlinks are resolved; the real path of
    each folder is computed once, a file's only when it is itself a link."""

    def __init__(self, root: Path | str):
        self.root = os.fspath(root)
        self.real_root = os.path.realpath(root)
        self._dirs: dict[str, bool] = {"": True}

    def _dir_ok(self, rel_dir: str) -> bool:
        ok = self._dirs.get(rel_dir)
        if ok is None:
            ok = self._dirs[rel_dir] = _is_within(os.path.realpath(os.path.join(self.root, rel_dir)), self.real_root)
        return ok

    def inside(self, rel: str) -> bool:
        rel = rel.rstrip("/")
        if not rel:
            return True
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        if not self._dir_ok(parent):
            return False
        full = os.path.join(self.root, rel)
        return not os.path.islink(full) or _is_within(os.path.realpath(full), self.real_root)


def list_files(root: Path, *, max_files: int = MAX_FILES, filtered: bool = True) -> list[str]:
    """Workspace-relative paths worth indexing: `git ls-files` (tracked and untracked, not ignored) in a git
    repository, else a walk honouring the top-level .gitignore. A path whose real path leaves `root` (a symlink
    to a file outside, a file under a symlinked folder) is left out, and a symlinked folder is never walked.
    `filtered=False` keeps vendored folders, data files (`skip_path`) and symlinks leaving the root so that a
    caller can say why it skips them (training's crawl, which reads no symlink); a walk then lists a vendored,
    hidden or symlinked folder as one entry ending with '/' instead of walking it."""
    if filtered:
        confine = Confinement(root)
        keep = lambda rel: not skip_path(rel) and confine.inside(rel)  # noqa: E731
    else:
        keep = lambda rel: True  # noqa: E731
    root = Path(root)
    listed = run_git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if listed is not None and listed.ok:
        rels = listed.lines("\0")
        # A folder that an enclosing repository ignores (a virtualenv, site-packages under a git-installed
        # tool) lists nothing: walk it instead.
        ignored = False
        if not rels:
            check = run_git(root, "check-ignore", "-q", ".")
            ignored = check is not None and check.ok
        if not ignored:
            return [r for r in dict.fromkeys(rels) if keep(r)][:max_files]
    patterns = _gitignore_patterns(root)
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        kept = []
        for d in sorted(dirnames):
            if _ignored(rel_dir + d, True, patterns) or d in (".git", ".hg", ".svn"):
                continue
            if d in VENDORED_DIRS or d.startswith(".") or os.path.islink(os.path.join(dirpath, d)):
                if not filtered:  # reported as a folder (trailing '/'), never walked
                    out.append(rel_dir + d + "/")
                continue
            kept.append(d)
        dirnames[:] = kept
        for f in sorted(filenames):
            rel = rel_dir + f
            if not keep(rel) or _ignored(rel, False, patterns):
                continue
            out.append(rel)
            if len(out) >= max_files:
                return out
    return out


def read_text_file(path: Path, max_bytes: int = MAX_FILE_BYTES, *, root: Path | str | None = None
                   ) -> Optional[str]:
    """The text of a source file, or None when it is missing, not a regular file, huge, binary or minified, or,
    with `root`, when its real path (symlinks resolved) is outside `root`. The real path is what is opened,
    without following a link swapped in since."""
    real = os.path.realpath(path)
    if root is not None and not _is_within(real, os.path.realpath(root)):
        return None
    try:
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:  # never open a FIFO or a device
            return None
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            data = fh.read(max_bytes + 1)
    except OSError:
        return None
    if len(data) > max_bytes:
        return None
    if b"\0" in data[:8192]:
        return None
    text = data.decode("utf-8", errors="replace")
    lines = text.count("\n") + 1
    if len(text) / lines > 400:  # minified or generated
        return None
    return text


__all__ = ["MAX_FILE_BYTES", "MAX_FILES", "VENDORED_DIRS", "SKIP_SUFFIXES", "SKIP_NAMES", "skip_path",
           "inside_root", "Confinement", "list_files", "read_text_file"]
