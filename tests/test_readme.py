"""The README and docs/ say only true things about the code: the README is short and starts with the
two commands, its library example runs, its commands parse, every link resolves, every folder of
its code map exists, every console script is shown, and every dotted name in the pages imports."""

from __future__ import annotations

import importlib
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from cli_runs import compose_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
MAX_README_LINES = 200

HYDRA_APPS = {"icolightning-train": "train", "icolightning-eval": "eval", "icolightning-predict": "predict"}
ARGPARSE_TOOLS = {"icolightning-regrid": "regrid", "icolightning-events": "events",
                  "icolightning-make-synthetic": "make_synthetic"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOTTED = re.compile(r"\b(?:icolightning|datamodules)(?:\.[A-Za-z_]\w*)+")
REPO_PATH = re.compile(r"(?<![\w/.-])((?:icolightning|datamodules|conf|scripts|tests|docs)/[\w./-]*\w)")


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def command_lines(text: str) -> list[str]:
    """The bash lines of a page, comments stripped and continuations joined."""
    joined = "\n".join(code_blocks(text, "bash")).replace("\\\n", " ")
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip()]


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)}


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t)]


def test_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    assert text.index("```bash") < text.index("\n## "), "the two commands come before any section"
    assert command_lines(text)[:2] == ["make train", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^train:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_readme_library_example_runs():
    example = next(b for b in code_blocks(README.read_text(), "python") if "check_equivariance(" in b)
    exec(compile(example, "README.md", "exec"), {})


def test_core_page_equivariance_example_runs_and_catches_the_broken_layer(capsys):
    example = next(b for b in code_blocks((DOCS / "core.md").read_text(), "python") if "class Broken" in b)
    exec(compile(example, "docs/core.md", "exec"), {})
    assert "Broken: relative equivariance error" in capsys.readouterr().out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: dead link {target}"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.name}: no heading #{anchor} in {file.name}"


def test_readme_links_every_docs_page():
    linked = {Path(t.partition("#")[0]).name for t in relative_links(README)}
    pages = {p.name for p in DOCS.glob("*.md")} - {"mnist_results.md"}
    assert pages <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_repository_path_named_exists(page):
    for path in set(REPO_PATH.findall(page.read_text())):
        assert (ROOT / path).exists(), f"{page.name} names {path}, which does not exist"
    for name in set(re.findall(r"\btest_\w+\.py\b", page.read_text())):
        assert (ROOT / "tests" / name).exists(), f"{page.name} names tests/{name}, which does not exist"


def test_every_path_in_the_code_map_exists():
    text = README.read_text()
    table = text[text.index("## Map of the code"):].split("\n## ")[0]
    cells = [row.split("|")[1] for row in table.splitlines() if row.startswith("| `")]
    paths = [p for cell in cells for p in re.findall(r"`([^`]+)`", cell)]
    assert len(paths) >= 15
    for path in paths:
        assert (ROOT / path).exists(), f"code map names {path}, which does not exist"


def test_every_console_script_appears_in_the_readme():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(HYDRA_APPS) | set(ARGPARSE_TOOLS)
    lines = command_lines(README.read_text())
    for script in scripts:
        assert any(line.startswith(script) for line in lines), f"no example of {script} in the README"


def test_readme_hydra_commands_compose(tmp_path):
    for line in command_lines(README.read_text()):
        words = shlex.split(line)
        if words[0] in HYDRA_APPS and "--cfg" not in words:
            compose_config(HYDRA_APPS[words[0]], tmp_path, "run", words[1:])


def test_readme_tool_commands_parse():
    for line in command_lines(README.read_text()):
        words = shlex.split(line)
        if words[0] in ARGPARSE_TOOLS:
            module = importlib.import_module(f"icolightning.cli.{ARGPARSE_TOOLS[words[0]]}")
            module.build_parser().parse_args(words[1:])


def resolves(name: str) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_dotted_name_imports(page):
    from icolightning.lightning.trust import LEGACY_TARGETS  # old paths the docs may name: they are mapped

    names = set(DOTTED.findall(page.read_text())) - set(LEGACY_TARGETS)
    missing = sorted(n for n in names if not resolves(n))
    assert not missing, f"{page.name} names what does not import: {missing}"
