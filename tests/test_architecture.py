"""Imports run one way (README, Architecture): nodes -> saemnesia_demo -> saemnesia_core, and
saemnesia_core imports neither ComfyUI nor the demo package nor the demo's model libraries."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "nodes", "node_helpers", "execution"}
# what the core must never reach: the host, the demo package, and the libraries only the demo model needs
NOT_IN_CORE = COMFYUI | {"saemnesia_demo", "diffusers", "transformers", "sentence_transformers", "aiohttp"}


def python_files(package: str) -> list[str]:
    out = []
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        out += [os.path.join(folder, f) for f in files if f.endswith(".py")]
    return sorted(out)


def imported_top_names(path: str) -> set[str]:
    """Top-level names of every absolute import in the file, wherever it stands (also inside functions)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def relative_imports_leaving(path: str, package_root: str) -> list[str]:
    """Relative imports that climb out of the package (e.g. `from .. import nodes` in the core)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    rel = os.path.relpath(os.path.dirname(path), package_root)
    depth = 0 if rel == "." else rel.count(os.sep) + 1  # sub-packages below the root
    return [f"line {n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > depth + 1]


def test_the_scan_sees_imports_anywhere_in_a_file(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import torch\ndef f():\n    from comfy.model_patcher import ModelPatcher\n    import folder_paths\n"
                 "from . import sae\nfrom .. import nodes\n")
    assert imported_top_names(str(p)) == {"torch", "comfy", "folder_paths"}
    assert relative_imports_leaving(str(p), str(tmp_path)) == ["line 6"]


def test_core_source_imports_neither_comfyui_nor_the_demo():
    root = os.path.join(ROOT, "saemnesia_core")
    bad = {}
    for path in python_files("saemnesia_core"):
        found = imported_top_names(path) & NOT_IN_CORE
        leaving = relative_imports_leaving(path, root)
        if found or leaving:
            bad[os.path.relpath(path, ROOT)] = sorted(found) + leaving
    assert not bad, f"saemnesia_core must stay the SAE library alone: {bad}"


def test_demo_package_imports_no_comfyui():
    """The demo model, its classifiers and the benchmark run without ComfyUI (the ComfyUI side is nodes/demo/)."""
    bad = {os.path.relpath(p, ROOT): sorted(imported_top_names(p) & COMFYUI) for p in python_files("saemnesia_demo")}
    assert not {k: v for k, v in bad.items() if v}


def test_only_the_demo_node_imports_the_demo_package():
    users = [os.path.relpath(p, ROOT) for p in python_files("nodes")
             if "saemnesia_demo" in imported_top_names(p) and os.sep + "demo" + os.sep not in p]
    assert not users, f"the four SAE nodes must not need the demo package: {users}"


@pytest.mark.parametrize("package", ["saemnesia_core"])
def test_importing_every_core_module_loads_no_comfyui_and_no_demo(package):
    """What actually ends up in sys.modules, in a fresh interpreter: also catches imports made by
    name (importlib) that a source scan cannot see."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"import {package} as pkg\n"
        "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted({{n.split('.')[0] for n in sys.modules}} & set({sorted(NOT_IN_CORE)!r}))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {package} loaded: {out.stdout.strip()}"
