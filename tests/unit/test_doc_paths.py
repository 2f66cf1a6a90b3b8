"""Every repository path that the docs, config comments and code strings mention exists.

What counts as a mention of a repository path:
- in README.md and docs/*.md: a relative markdown link (its #anchor must name a
  heading of the target), a backticked path, and any `docs/...`;
- in comments of the stack's config (compose, Dockerfile, pyproject, prometheus/,
  grafana/provisioning/, scripts/): a path, resolved from the file's folder or
  the repository root;
- in Python string literals (error messages, docstrings) and markdown code
  blocks: a path whose first folder is one of the repository's own;
- anywhere: `docs/<name>` (the acceptance check `grep -rn docs/`).
A path is a word with a `/` that ends in `/`, holds a `*` (a glob: it must
match something) or ends in a file name with an extension (`.md`, `.yml`); so `admin/admin`,
`3000/tcp` or `HTTP/1.0` are not paths. URLs and absolute paths (container
paths, /metrics) are not repository paths.

And the docs' shape: README.md is a landing page (short, linking every page of
docs/), docs/development.md has its five "how to add" recipes, and
docs/alerts.md describes every alert the rules define.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.support.procs import REPO

# Mentioned on purpose, not in the repository: (prefix, why).
NOT_IN_REPO = [
    ("out_dir/", "written by the trainer into its --out_dir at run time"),
    ("../shared/", "a developer's optional copy of tiny Shakespeare beside the clone"),
    ("config/train_shakespeare_char.py", "karpathy/nanoGPT's file, which the shakespeare-char preset copies"),
]
MARKDOWN = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CONFIG = [REPO / "docker-compose.yml", REPO / "Dockerfile", REPO / "pyproject.toml",
          *sorted(REPO.glob("prometheus/**/*.yml")), *sorted(REPO.glob("grafana/provisioning/**/*.yml")),
          *sorted(REPO.glob("scripts/*.sh"))]  # fmt: skip
PYTHON = sorted(p for folder in ("nanogpt", "exporter", "grafana", "bench", "tests") for p in (REPO / folder).rglob("*.py")
                if "node_modules" not in p.parts)  # fmt: skip
TOP_FOLDERS = sorted(p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
PATH_WORD = re.compile(r"[\w.*-]+(?:/[\w.*+-]*)+")
README_MAX_LINES = 250  # a landing page: nanoGPT's README is 234 lines; depth goes to docs/
RECIPES = ("Add a metric", "Add a route", "Add an alert", "Add a panel", "Add an adapter")


def as_path(word: str) -> str | None:
    """The path in a word of prose or code, or None when the word is not a relative path."""
    word = word.strip("'\"`,;:()[]<>").rstrip(".,;:")
    if not PATH_WORD.fullmatch(word) or word.startswith(("/", "~")):
        return None
    last = word.rstrip("/").rsplit("/", 1)[-1]
    return word if word.endswith("/") or "*" in word or re.search(r"[^.]\.[A-Za-z]\w*$", last) else None


def in_repo_folder(path: str) -> bool:
    return path.split("/")[0] in TOP_FOLDERS


def exists(path: str, base: Path) -> bool:
    """True when path (a glob maybe) names something from base or from the repository root."""
    for root in (base, REPO):
        if "*" in path and any(root.glob(path)):
            return True
        if "*" not in path and (root / path).exists():
            return True
    return False


def missing(mentions: list[tuple[str, str, Path]]) -> list[str]:
    """The mentions (where, path, base folder) that name nothing and are not known to be elsewhere."""
    return [f"{where}: {path}" for where, path, base in mentions
            if not exists(path, base) and not any(path.startswith(prefix) for prefix, _ in NOT_IN_REPO)]  # fmt: skip


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def github_anchor(heading: str) -> str:
    """The #anchor GitHub gives a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_scanned_files_exist():
    assert REPO / "docs" / "stack.md" in MARKDOWN and all(p.is_file() for p in MARKDOWN + CONFIG)
    assert {"docs", "nanogpt", "exporter", "prometheus", "grafana"} <= set(TOP_FOLDERS)


def test_what_counts_as_a_path():
    assert [as_path(w) for w in ("docs/stack.md.", "`prometheus/tests/*.yml`", "grafana/", "(nanogpt/atomic.py)")] == [
        "docs/stack.md", "prometheus/tests/*.yml", "grafana/", "nanogpt/atomic.py"]
    for word in ("admin/admin", "3000/tcp", "HTTP/1.0", "/metrics", "http://localhost:3000", "~/.cache/x.txt", "a/b"):
        assert as_path(word) is None, word


@pytest.mark.parametrize("doc", MARKDOWN, ids=rel)
def test_markdown_links_reach_a_file_and_a_heading(doc):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path) if path else doc
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(), re.MULTILINE)
            if anchor not in {github_anchor(h) for h in headings}:
                broken.append(target)
    assert not broken, f"{rel(doc)} links to missing files or headings: {broken}"


@pytest.mark.parametrize("doc", MARKDOWN, ids=rel)
def test_paths_in_markdown_exist(doc):
    text = doc.read_text()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    blocks = re.findall(r"^```.*?^```", text, flags=re.MULTILINE | re.DOTALL)
    mentions = [(rel(doc), p, doc.parent) for span in re.findall(r"`([^`\n]+)`", prose)
                for p in map(as_path, span.split()) if p]  # fmt: skip
    mentions += [(f"{rel(doc)} (code block)", p, doc.parent) for block in blocks
                 for p in map(as_path, block.split()) if p and in_repo_folder(p)]  # fmt: skip
    assert mentions or doc.name != "README.md", "expected README.md to mention paths"
    assert not (bad := missing(mentions)), "missing: " + ", ".join(bad)


@pytest.mark.parametrize("config", CONFIG, ids=rel)
def test_paths_in_config_comments_exist(config):
    mentions = []
    for number, line in enumerate(config.read_text().splitlines(), start=1):
        comment = re.search(r"(?:^|\s)#(.*)$", line)
        if comment:
            mentions += [(f"{rel(config)}:{number}", p, config.parent) for p in map(as_path, comment.group(1).split())
                         if p]  # fmt: skip
    assert not (bad := missing(mentions)), "missing: " + ", ".join(bad)


def test_paths_in_python_strings_exist():
    mentions = []
    for module in PYTHON:
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                mentions += [(f"{rel(module)}:{node.lineno}", p, module.parent) for p in map(as_path, node.value.split())
                             if p and in_repo_folder(p)]  # fmt: skip
    assert len(mentions) > 10  # docstrings and messages do name files: the scan reads them
    assert not (bad := missing(mentions)), "missing: " + ", ".join(bad)


def test_every_docs_mention_anywhere_names_a_file():
    mentions = []
    for file in REPO.rglob("*"):
        parts = file.relative_to(REPO).parts
        if not file.is_file() or any(p.startswith(".") or p in ("node_modules", "__pycache__") for p in parts):
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # not text
        mentions += [(rel(file), m, REPO) for m in re.findall(r"(?<![\w/.-])docs/[\w.-]*\w", text)]
    assert any(path == "docs/stack.md" for _, path, _ in mentions)
    assert not (bad := missing(mentions)), "missing: " + ", ".join(bad)


def headings(doc: Path) -> list[str]:
    """The markdown headings of a doc, outside code blocks."""
    prose = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.MULTILINE | re.DOTALL)
    return re.findall(r"^#+ (.+)$", prose, re.MULTILINE)


def test_the_readme_is_a_landing_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move depth into docs/"


def test_the_readme_links_every_page_of_docs():
    linked = {Path(target.partition("#")[0]).name
              for target in re.findall(r"\]\((docs/[^)\s]+)\)", (REPO / "README.md").read_text())}
    assert not (unlinked := {p.name for p in (REPO / "docs").glob("*.md")} - linked), unlinked


def test_development_md_has_the_five_recipes():
    assert set(RECIPES) <= set(headings(REPO / "docs" / "development.md"))


def test_alerts_md_describes_every_alert():
    alerts = [rule["alert"] for path in sorted((REPO / "prometheus" / "rules").glob("*.yml"))
              for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule]
    doc = REPO / "docs" / "alerts.md"
    assert len(alerts) >= 7
    assert not (missing_heading := set(alerts) - set(headings(doc))), f"{rel(doc)} has no section for {missing_heading}"
    table = re.findall(r"^\| `(NanoGPT\w+)` \|", doc.read_text(), re.MULTILINE)
    assert not (missing_row := set(alerts) - set(table)), f"{rel(doc)}'s table lacks {missing_row}"
