"""The docs stay true to the tree: README is a front page whose links exist, every committed
result is cited by the docs, and every file path the docs name exists."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))


def all_docs() -> str:
    return "\n".join(p.read_text() for p in [ROOT / "README.md", *DOCS])


def test_readme_is_a_front_page_linking_existing_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    linked = set(re.findall(r"docs/[\w.-]+\.md", readme))
    assert {"docs/architecture.md", "docs/configuration.md", "docs/results.md", "docs/CHANGELOG.md"} <= linked
    assert [p for p in linked if not (ROOT / p).is_file()] == []


def test_every_committed_result_is_cited():
    text = all_docs()
    uncited = []
    for f in sorted((ROOT / "benchmarks" / "results").rglob("*")):
        if f.is_file():
            stem = f.name.replace("_curve.png", ".json")  # a curve is cited through its run's result
            if f.name not in text and stem not in text:
                uncited.append(str(f.relative_to(ROOT)))
    assert uncited == []


def test_paths_named_in_the_docs_exist():
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *DOCS] if p.name != "CHANGELOG.md")  # history
    paths = set(re.findall(r"`((?:configs|flowalign|reward_models|samplers|benchmarks|tests)/[\w./-]+)`", text))
    missing = [p for p in sorted(paths) if "*" not in p and "NAME" not in p and not (ROOT / p.rstrip("/")).exists()]
    assert missing == []
