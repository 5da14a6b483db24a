"""The layout's rule: a lower layer never imports a higher one (the trainer knows nothing of the search)."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "autokd"
# each layer, and the modules it must never import, even lazily inside a function
FORBIDDEN = {
    "train": ("autokd.search", "autokd.supernet", "autokd.pipeline", "autokd.cli", "autokd.report"),
    "data": ("autokd.search", "autokd.train", "autokd.pipeline", "autokd.cli", "autokd.proxies"),
    "recipes": ("autokd.search", "autokd.train", "autokd.pipeline", "autokd.cli"),
    "supernet": ("autokd.pipeline", "autokd.cli"),
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_layer_imports_a_higher_one_anywhere_in_its_files():
    offences = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            offences += [f"{path.relative_to(PACKAGE)} imports {name}" for name in imported_modules(path)
                         if name.startswith(forbidden)]
    assert not offences, offences


def test_importing_the_trainer_loads_no_search_module():
    code = ("import sys, autokd.train; "
            "print(sorted(m for m in sys.modules if m.startswith(('autokd.search', 'autokd.pipeline'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
