"""Who may import whom: `storymaker_core` is only the model (it imports none of the applications in `storymaker`,
the nodes or the trainer), its modules import each other without a circle, the nodes import only
`storymaker_core` (one documented exception: the consistency node scores with `storymaker.evaluate`), and
`storymaker` reaches `storymaker_core` through `storymaker/_core.py`, which finds the pack's own copy when
ComfyUI imports the pack as a package."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE, APPS = "storymaker_core", "storymaker"
#: (importing module, imported module prefix): the only import of an application by a node, and why
NODE_EXCEPTIONS = {("nodes.consistency", "storymaker.evaluate")}  # the issue asks for the existing evaluation code


def modules(package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of a package folder in the repository."""
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path) -> list[tuple[int, str, int]]:
    """(line, absolute name, level) of every import in the module, at any depth (function-level ones too);
    relative imports resolved against the module's package (a name starting with "<beyond>" left it).
    ``from X import y`` gives ``X.y`` too, as y may be a submodule."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level <= len(package) else None
                target = ".".join((base if base is not None else ["<beyond>"] * (node.level - len(package)))
                                  + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append((node.lineno, target, node.level))
            found += [(node.lineno, f"{target}.{alias.name}", node.level) for alias in node.names]
    return found


def is_in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_core_imports_no_application_node_or_trainer():
    bad = []
    for name, path in modules(CORE).items():
        for line, target, level in imports(name, path):
            if target.startswith("<beyond>") or any(is_in(target, p) for p in (APPS, "nodes", "training",
                                                                                  "storymaker_training")):
                bad.append(f"{path.relative_to(REPO)}:{line}: {target}")
        source = path.read_text(encoding="utf-8")  # and no dynamic import of them by name
        for word in ("import_module(\"storymaker.", "import_module('storymaker.", "__import__(\"storymaker"):
            if word in source:
                bad.append(f"{path.relative_to(REPO)}: {word}")
    assert not bad, "storymaker_core must not import the applications, the nodes or the trainer:\n" + "\n".join(bad)


def cycles(package: str) -> list[list[str]]:
    """Import circles among the modules of ``package`` (every import, function-level ones too)."""
    names = modules(package)
    edges = {name: sorted({t for _, t, _ in imports(name, path) if t in names and t != name})
             for name, path in names.items()}
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in names:
        if node not in state:
            visit(node)
    return found


@pytest.mark.parametrize("package", [CORE, APPS])
def test_no_import_cycles(package):
    assert cycles(package) == [], "\n".join(" -> ".join(c) for c in cycles(package))


def test_the_cycle_finder_finds_one(tmp_path, monkeypatch):
    for name, text in {"__init__.py": "", "a.py": "def f():\n    from .b import g\n", "b.py": "from . import a\n"}.items():
        (tmp_path / "pkg" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert cycles("pkg") in ([["pkg.a", "pkg.b", "pkg.a"]], [["pkg.b", "pkg.a", "pkg.b"]])


def test_nodes_import_only_the_core_relatively_with_one_documented_exception():
    """ComfyUI imports the pack as a package named after its folder: the nodes reach storymaker_core as
    `..storymaker_core`. Only nodes/consistency.py imports an application: the evaluation code."""
    bad, used = [], set()
    for name, path in modules("nodes").items():
        for line, target, level in imports(name, path):
            where = f"{path.relative_to(REPO)}:{line}: {target}"
            if level == 0 and any(is_in(target, p) for p in (CORE, APPS, "nodes", "training")):
                bad.append(f"{where} (absolute: use a relative import)")
            elif level >= 2:  # leaves nodes/: the pack's other packages
                pack_level = target.removeprefix("<beyond>.")
                exception = next((e for e in NODE_EXCEPTIONS if e[0] == name and is_in(pack_level, e[1])), None)
                if exception:
                    used.add(exception)
                elif not is_in(pack_level, CORE):
                    bad.append(where)
    assert not bad, "nodes/ may import only storymaker_core:\n" + "\n".join(bad)
    assert used == NODE_EXCEPTIONS  # the exception is still needed (else remove it here, in the docs and the node)
    assert "one node that imports the application package" in (REPO / "nodes" / "consistency.py").read_text()


def test_the_applications_reach_the_core_through_one_module():
    """An absolute `storymaker_core` import fails inside ComfyUI (or finds another copy); a relative
    `..storymaker_core` fails when `storymaker` is top-level: storymaker/_core.py answers both."""
    bad = []
    for name, path in modules(APPS).items():
        for line, target, level in imports(name, path):
            if is_in(target.removeprefix("<beyond>."), CORE) or target.startswith("<beyond>"):
                bad.append(f"{path.relative_to(REPO)}:{line}: {target}")
    assert not bad, "import storymaker_core's modules with `from .._core import NAME`:\n" + "\n".join(bad)


def test_inside_the_pack_the_evaluation_code_uses_the_packs_own_core(tmp_path):
    """As ComfyUI loads it: the pack's folder is a package (here `pack_under_test`), the repository root is not
    on sys.path, and the consistency node's evaluation code must share the nodes' storymaker_core modules."""
    code = textwrap.dedent(f"""
        import importlib, sys, types
        import numpy as np
        pack = types.ModuleType("pack_under_test")
        pack.__path__ = [{str(REPO)!r}]
        sys.modules["pack_under_test"] = pack
        panels = importlib.import_module("pack_under_test.storymaker.evaluate.panels")
        embedders = importlib.import_module("pack_under_test.storymaker.evaluate.embedders")
        from pack_under_test.storymaker_core import faces, story_render
        assert panels.story_render is story_render and embedders.FaceAnalyzer is faces.FaceAnalyzer
        region = np.zeros((8, 8), np.float32)
        region[:, :4] = 1
        crop, what = panels.region_crop(np.full((8, 8, 3), 9, np.uint8), region)  # imports preprocess lazily
        assert what.startswith("region") and "pack_under_test.storymaker_core.preprocess" in sys.modules, what
        top = sorted(m for m in sys.modules if m.split(".")[0] in ("storymaker", "storymaker_core"))
        assert not top, top  # no second copy under the top-level names
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
