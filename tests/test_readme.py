"""README's layout table names every module and script as they are (issue 16, item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("dicomnode", "dicomnode/engine", "dicomnode/nets", "training", "bench")


def _layout() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Layout")
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end > 0 else None]


@pytest.mark.parametrize("folder", FOLDERS)
def test_layout_names_every_module_and_script(folder: str) -> None:
    layout = _layout()
    files = sorted(p for p in (ROOT / folder).iterdir()
                   if (p.suffix in (".py", ".sh") and p.name != "__init__.py") or
                   (p.name == "__init__.py" and folder == "dicomnode"))
    assert files, folder
    missing = [p.name for p in files
               if f"`{folder}/{p.name}`" not in layout and f"`{p.name}`" not in layout]
    assert not missing, f"README's layout table does not name {missing} of {folder}/"
