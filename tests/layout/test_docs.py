"""The documentation runs: every page of docs/ and the Python blocks of the top-level README.

Each page runs on its own, in a fresh temporary working directory, with TQDM_DISABLE=1 and
one namespace for all its blocks, in the order they appear:

  - ```python blocks are executed;
  - in ```bash blocks, every line that starts with `trustfast ` is run as
    `trustfast.cli.main(shlex.split(line)[1:])` and must return 0; a line may continue over
    several with a trailing `\\`, `#` starts a comment, and leading `NAME=value` assignments
    are set in the environment for that line (`PYTHONPATH` entries also go on sys.path, as
    they would for a new process). Other lines (torchrun, deepspeed, make, python -m ...,
    pip) are not run;
  - every other block (```text, ```yaml, ```console, ``` without a language, ...) is not run.

The README's bash blocks are not run (`make demo` / `make test`); its Python blocks are. A
page must run at least one block; a failing block is reported with the page, the block's line
and first line (and, in a bash block, the failing command). tqdm reads TQDM_DISABLE when it is
imported, so in this process (where tqdm is imported already) setting it mostly states the
intent; pytest captures the bars either way. The examples run on one intra-op thread, as the
other slow tests do: on a busy 2-core machine two threads made them several times slower.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_intra_op_thread")]


@dataclass
class Block:
    language: str
    text: str
    line: int  # 1-based line of the block's first line in the page

    @property
    def first_line(self) -> str:
        return next((s.strip() for s in self.text.splitlines() if s.strip()), "")


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown page, each dedented by its fence's indentation."""
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, language = len(match.group(1)), match.group(2).lower()
        body, start = [], i + 2
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        out.append(Block(language, "\n".join(body) + "\n", start))
        i += 1
    return out


def commands(script: str) -> list[list[str]]:
    """The `trustfast ...` lines of a bash block as argument lists (leading NAME=value
    assignments kept in front), with `\\` continuations joined."""
    joined, pending = [], ""
    for raw in script.splitlines():
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        joined.append(line)
    out = []
    for line in joined:
        words = shlex.split(line, comments=True)
        k = 0
        while k < len(words) and ASSIGNMENT.match(words[k]):
            k += 1
        if k < len(words) and words[k] == "trustfast":
            out.append(words)
    return out


def run_command(words: list[str], monkeypatch) -> None:
    from trustfast.cli import main

    k = 0
    with monkeypatch.context() as env:
        while ASSIGNMENT.match(words[k]):
            name, _, value = words[k].partition("=")
            env.setenv(name, value)
            if name == "PYTHONPATH":
                for entry in reversed(value.split(os.pathsep)):
                    env.syspath_prepend(os.path.abspath(entry or "."))
            k += 1
        code = main(words[k + 1:])
    assert code == 0, f"exit status {code}"


def run_page(page: Path, monkeypatch) -> int:
    """Run a page's blocks; returns how many ran."""
    name = f"_docs_{page.stem.lower().replace('-', '_')}"
    module = types.ModuleType(name)  # a real module, so dataclasses and pickling work
    module.__file__ = str(Path.cwd() / f"{name}.py")
    sys.modules[name] = module
    ran = 0
    readme = page.name == "README.md" and page.parent == ROOT
    try:
        for block in blocks(page.read_text()):
            if block.language == "python":
                code = compile(block.text, f"{page.name}:{block.line}", "exec")
                steps = [("", lambda c=code: exec(c, module.__dict__))]
            elif block.language in ("bash", "sh", "shell") and not readme:
                steps = [(f"; command: {shlex.join(w)}",
                          lambda w=w: run_command(w, monkeypatch))
                         for w in commands(block.text)]
                if not steps:
                    continue
            else:
                continue
            for what, step in steps:
                try:
                    step()
                except BaseException as exc:  # SystemExit from argparse included
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    pytest.fail(f"{page.relative_to(ROOT)}: the {block.language} block at line "
                                f"{block.line} ({block.first_line!r}) failed{what}: "
                                f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}",
                                pytrace=False)
            ran += 1
    finally:
        sys.modules.pop(name, None)
    return ran


def _drop_modules_under(folder: Path) -> None:
    """Forget modules a page wrote and imported (its own packages), so pages stay apart."""
    for key, mod in list(sys.modules.items()):
        file = getattr(mod, "__file__", None)
        if file and Path(file).resolve().is_relative_to(folder.resolve()):
            del sys.modules[key]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.delenv("TRUSTFAST_BACKEND", raising=False)
    try:
        ran = run_page(page, monkeypatch)
    finally:
        _drop_modules_under(tmp_path)
    assert ran >= 1, f"{page.relative_to(ROOT)} ran no block (python, or bash with trustfast)"


def test_the_block_parser():
    page = ("text\n```python\nx = 1\n```\n- item\n  ```bash\n  trustfast list  # all\n"
            "  make test\n  PYTHONPATH=. trustfast unlearn --methods ft \\\n"
            "      --out runs/u\n  ```\n```yaml\na: 1\n```\n")
    found = blocks(page)
    assert [(b.language, b.line) for b in found] == [("python", 3), ("bash", 7), ("yaml", 13)]
    assert commands(found[1].text) == [
        ["trustfast", "list"],
        ["PYTHONPATH=.", "trustfast", "unlearn", "--methods", "ft", "--out", "runs/u"]]


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    """Every relative link of a page names a file of the repository (anchors aside)."""
    missing = []
    for target in LINK.findall(page.read_text()):
        path = target.split("#")[0]
        if not path or "://" in path:
            continue
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"
