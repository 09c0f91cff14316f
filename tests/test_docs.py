"""The docs name what the code has: every command and option of the CLI is in docs/cli.md, every docs page is in
README's list, every file path the docs cite exists, and every module of fiun_hub/ has a tier in pyproject.toml's
layers contract (docs/architecture.md). Each check reads the real files; none needs a hub."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_every_command_and_option_is_in_cli_md():
    from fiun_hub_cli.main import main

    text = (ROOT / "docs" / "cli.md").read_text()
    missing = []
    for name, cmd in sorted(main.commands.items()):
        if f"`{name}" not in text:
            missing.append(name)
        for p in cmd.params:
            for opt in getattr(p, "opts", []):
                if opt.startswith("-") and opt not in ("-h", "--help") and not re.search(
                        rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text):
                    missing.append(f"{name} {opt}")
    for p in main.params:
        for opt in getattr(p, "opts", []):
            if opt not in text:
                missing.append(opt)
    assert not missing, f"not in docs/cli.md: {missing}"


def test_readme_lists_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert [p.name for p in DOCS if f"(docs/{p.name})" not in readme] == []


def test_every_cited_path_exists():
    cited = set()
    for page in [ROOT / "README.md", *DOCS]:
        for m in re.finditer(r"(?<![\w/.])((?:fiun_hub|cli|benchmarks|tests|scripts)/[\w./-]*\w)(\{[^}`]*\}[\w.-]*)?",
                             page.read_text()):
            if m.group(2):  # a brace group: benchmarks/results/x_{a,b}.json names x_a.json and x_b.json
                alts, rest = m.group(2)[1:].split("}", 1)
                cited.update((page.name, m.group(1) + alt + rest) for alt in alts.split(","))
            else:
                cited.add((page.name, m.group(1)))
    assert sorted(c for c in cited if not (ROOT / c[1]).exists()) == []


def test_every_module_has_a_tier():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in conf if c["name"].startswith("Layers:"))["layers"]
    tiered = {m.strip() for layer in layers for m in re.split(r"[:|]", layer)}
    core = set(next(c for c in conf if c["type"] == "forbidden")["source_modules"])
    top = {"fiun_hub." + (p.stem if p.is_file() else p.name) for p in (ROOT / "fiun_hub").iterdir()
           if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    hub = {"fiun_hub.hub." + p.stem for p in (ROOT / "fiun_hub" / "hub").glob("*.py") if p.stem != "__init__"}
    untiered = sorted(m for m in top | hub if m not in tiered and m != "fiun_hub.hub")
    assert untiered == []
    # the research contract's core: every top-level module but research itself
    assert sorted(m for m in top - {"fiun_hub.research"} if m not in core) == []
    arch = (ROOT / "docs" / "architecture.md").read_text()
    assert sorted(m for m in top if f"`{m.split('.')[-1]}" not in arch) == []


def test_architecture_names_every_module_of_every_package():
    arch = (ROOT / "docs" / "architecture.md").read_text()
    missing = [f"{pkg}/{p.stem}" for pkg in ("compliance", "hub", "research", "serve")
               for p in sorted((ROOT / "fiun_hub" / pkg).glob("*.py"))
               if p.stem != "__init__" and not re.search(rf"`(?:{pkg}/)?{p.stem}(?:\.py)?`", arch)]
    assert missing == []
