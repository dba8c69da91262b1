"""Every third-party module that ``src/`` imports is a declared requirement of the installed package.

Module-level imports must be in ``install_requires``; imports inside a function (optional, lazily imported)
must be in ``install_requires`` or in an extra. The requirements are read from the installed metadata
(``importlib.metadata``), i.e. what ``pip install`` actually resolves, not from the source tree.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

SRC = Path(__file__).resolve().parents[2] / "src" / "hf_dtokd"


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(top-level module name, imported at module level) for every absolute import of a module."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name.split(".")[0], not nested) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], not nested))
        inside = nested or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found


def third_party_imports() -> dict[str, bool]:
    """module -> True when some file imports it at module level."""
    modules: dict[str, bool] = {}
    for path in SRC.rglob("*.py"):
        for module, at_module_level in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if module in sys.stdlib_module_names or module == "hf_dtokd":
                continue
            modules[module] = modules.get(module, False) or at_module_level
    return modules


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_requirements() -> tuple[set[str], set[str]]:
    """(install_requires, every extra's requirements) of the installed hf-dtokd, as normalised names."""
    base, extras = set(), set()
    for line in metadata.requires("hf-dtokd") or []:
        requirement = Requirement(line)
        names = {_normalise(requirement.name)}
        if requirement.marker is not None and "extra" in str(requirement.marker):
            extras |= names
        else:
            base |= names
    return base, extras


def distributions_of(module: str) -> set[str]:
    """The distributions that provide ``module`` (installed ones), else the module's own name."""
    provided = metadata.packages_distributions().get(module)
    return {_normalise(d) for d in provided} if provided else {_normalise(module)}


def test_the_scan_sees_module_level_and_lazy_imports():
    tree = ast.parse("import numpy\nfrom torch import nn\ndef f():\n    import torchao\n")
    assert _imports(tree) == [("numpy", True), ("torch", True), ("torchao", False)]


@pytest.mark.parametrize("module", sorted(m for m, top in third_party_imports().items() if top))
def test_module_level_imports_are_install_requires(module):
    base, _ = declared_requirements()
    assert distributions_of(module) & base, (
        f"src/ imports {module!r} at module level but install_requires (setup.cfg) does not declare "
        f"{sorted(distributions_of(module))}; add it there"
    )


@pytest.mark.parametrize("module", sorted(m for m, top in third_party_imports().items() if not top))
def test_lazy_imports_are_declared_somewhere(module):
    base, extras = declared_requirements()
    assert distributions_of(module) & (base | extras), (
        f"src/ imports {module!r} inside a function but neither install_requires nor an extra declares "
        f"{sorted(distributions_of(module))}; add it to the extra that needs it"
    )


def _stderr_of(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return "\n".join(line.split("]", 1)[-1] for line in done.stderr.splitlines())  # drop timestamps


def test_import_adds_nothing_to_what_transformers_prints():
    """A plain install (no torchao) prints nothing at ``import hf_dtokd`` (checked on a fresh install by
    ``.ci/check_package``). Where torchao is installed, transformers' own ``from transformers import
    Trainer`` prints two torch warnings; the package must add nothing to them and import no torchao itself."""
    assert _stderr_of("import hf_dtokd") == _stderr_of("from transformers import Trainer")
    code = "import sys; from transformers import Trainer; before = 'torchao' in sys.modules; import hf_dtokd.runtime.precision; "
    code += "assert before or 'torchao' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
