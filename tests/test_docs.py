"""The documentation: the MkDocs site builds with --strict (a broken link, anchor or missing page
fails it), every file and section the README and docs/ link to exists, committed results carry
no absolute paths of the machine that made them, and the docs cite no internal issue numbers."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKDOWN = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def _cli_hook():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "hooks" /
                                                  "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slugs(title: str) -> set[str]:
    """The anchor of a heading as MkDocs makes it (runs of spaces and hyphens collapse) and as
    GitHub makes it (each space one hyphen), so README links work in both places."""
    text = INLINE_CODE.sub(lambda m: m.group(0)[1:-1], title)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text)
    mkdocs = re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())
    github = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
    return {mkdocs, github}


def _anchors(markdown: str) -> set[str]:
    return {s for title in HEADING.findall(FENCE.sub("", markdown)) for s in _slugs(title)}


def _links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_slugs_follow_mkdocs_and_github() -> None:
    assert _slugs("The weights file and its record (format `reslab-2`)") == {
        "the-weights-file-and-its-record-format-reslab-2"}
    assert _slugs("Batch 1: how far fp32 convolutions can go") == {
        "batch-1-how-far-fp32-convolutions-can-go"}
    assert _slugs("A - B") == {"a-b", "a---b"}


def test_every_linked_file_and_section_exists() -> None:
    generated = {DOCS / _cli_hook().PAGE: _cli_hook().cli_reference()}
    broken = []
    for page in MARKDOWN:
        for target in _links(page):
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if dest in generated:
                text = generated[dest]
            elif dest.exists():
                text = dest.read_text(encoding="utf-8") if dest.suffix == ".md" else ""
            else:
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
                continue
            if anchor and anchor not in _anchors(text):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such section)")
    assert not broken, "\n".join(broken)


def test_the_link_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Top\n[ok](#top) [gone](missing.md) `[code](not-a-link.md)`\n"
                    "```\n[fenced](nor-this.md)\n```\n", encoding="utf-8")
    assert _links(page) == ["#top", "missing.md"]
    assert "top" in _anchors(page.read_text())


def test_every_source_file_the_docs_name_exists() -> None:
    """`engine/loop.py`, `benchmarks/inference.py`, `cam.py`: a path is looked up from the
    checkout, the package, benchmarks/ and tests/; a bare file name anywhere in the checkout."""
    bases = [ROOT, ROOT / "src" / "reslab", ROOT / "src", ROOT / "benchmarks", ROOT / "tests"]
    names = {p.name for d in ("src", "benchmarks", "tests", "examples", "docs")
             for p in (ROOT / d).rglob("*.py")}
    missing = []
    for page in MARKDOWN:
        for path in set(re.findall(r"`((?:[\w.-]+/)*[\w-]+\.py)`", page.read_text("utf-8"))):
            found = path in names if "/" not in path else any((b / path).is_file()
                                                                for b in bases)
            if not found:
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, missing


def _headline_rows(text: str, heading: str) -> list[tuple[str, str]]:
    """(result, number) of each row of the table under `heading`."""
    lines = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")),
               len(lines))
    return [tuple(c.strip() for c in row.strip("|").split("|")[:2])
            for row in lines[start + 2:end]]   # after the header and its |---| line


def test_the_readme_quotes_the_current_headline_results() -> None:
    """One table of current numbers, in two places: the README's must equal the results
    index's (the pages behind each row say where it comes from)."""
    readme = _headline_rows((ROOT / "README.md").read_text("utf-8"), "## Current results")
    index = _headline_rows((DOCS / "results" / "README.md").read_text("utf-8"),
                           "## Current headline results")
    assert len(index) >= 5 and readme == index


def test_the_results_index_lists_every_result() -> None:
    """Each file or run directory in docs/results/ and its archive/ is linked from the index
    (docs/results/README.md), so no number is left without its command, date and status."""
    results = DOCS / "results"
    linked = {(results / t.partition("#")[0]).resolve() for t in _links(results / "README.md")}
    pages = {p.resolve() for p in MARKDOWN}
    unlisted = [str(entry.relative_to(results)) for folder in (results, results / "archive")
                for entry in sorted(folder.iterdir())
                if entry.name != "archive" and entry.resolve() not in pages
                and not any(entry.resolve() == t or entry.resolve() in t.parents for t in linked)]
    assert not unlisted, unlisted


def test_committed_results_hold_no_absolute_paths_of_this_machine() -> None:
    machine_path = re.compile(r"(?<![\w.~])/(?:work|tmp|root|home|Users|mnt|scratch)/")
    offenders = [str(p.relative_to(ROOT)) for p in sorted((DOCS / "results").rglob("*"))
                 if p.suffix in {".json", ".jsonl", ".md", ".txt", ".toml", ".html"}
                 and machine_path.search(p.read_text(encoding="utf-8", errors="replace"))]
    assert not offenders, offenders


def test_the_docs_cite_no_internal_issue_numbers() -> None:
    cited = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in MARKDOWN
             for m in re.finditer(r"\bissues? #?\d+", p.read_text(encoding="utf-8"), re.I)]
    assert not cited, cited


@pytest.mark.slow
def test_the_site_builds_with_strict(tmp_path: Path) -> None:
    """The same build as `make docs`; mkdocstrings reads the sources statically, the CLI
    reference imports the parser (about 15 s on 2 cores)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert 'id="reslab-train"' in cli and "--recipe" in cli
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert 'id="reslab.load_checkpoint"' in api


PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
ALL_SNIPPETS = [(path, i, code) for path in MARKDOWN
                for i, code in enumerate(PYTHON_BLOCK.findall(path.read_text(encoding="utf-8")))]
# A client of a running `reslab serve`: tests/test_serve_v2.py runs it against a real server
# (the guide's address and model name swapped for the test server's), so not alone here.
NEEDS_A_SERVER = "tritonclient.http"
SNIPPETS = [s for s in ALL_SNIPPETS if NEEDS_A_SERVER not in s[2]]


def test_a_snippet_left_out_here_runs_against_a_server_elsewhere() -> None:
    left_out = [f"{p.name}#{i}" for p, i, code in ALL_SNIPPETS if NEEDS_A_SERVER in code]
    assert left_out == ["deploy.md#1"]
    v2_tests = (ROOT / "tests" / "test_serve_v2.py").read_text(encoding="utf-8")
    assert '"docs" / "guides" / "deploy.md"' in v2_tests


def test_the_snippet_finder_sees_the_readmes_python() -> None:
    assert sum(path.name == "README.md" for path, _, _ in SNIPPETS) >= 2


@pytest.mark.parametrize("path, index, code", SNIPPETS,
                         ids=[f"{p.relative_to(ROOT)}#{i}" for p, i, _ in SNIPPETS])
def test_every_python_snippet_runs_as_pasted(path: Path, index: int, code: str,
                                             tmp_path: Path) -> None:
    """Each ```python block of the README and docs/, alone, in a fresh directory: nothing
    undefined (x, example_input, ...), nothing it does not create itself."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, f"{path.name} block {index}:\n{proc.stderr[-2000:]}"
