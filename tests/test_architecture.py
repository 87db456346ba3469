"""The import graph of avseg: layers that import only downward, no circles.

Every ``import`` of an avseg module counts, at module level or inside a function (a lazy import is still
a dependency). Run this file as a script to print the package-level graph:

    python tests/test_architecture.py
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "avseg"

# Bottom to top. A package (or top-level module) may import its own package and those in lower layers;
# packages within one layer do not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("types", "fileio", "weights"),  # the batch contract; atomic writes, hashing; safe weight-file loading
    ("audio",),  # decoding, resampling, front-ends (and the frozen aisfx network they run)
    ("config", "data"),  # typed configs (DataConfig, TrainSettings); datasets in the AVSBench layouts
    ("visualize",),  # overlays, heat maps, contact sheets
    ("models",),
    ("losses", "metrics"),
    ("engine",),  # the training loop, the evaluation loop, checkpoints, tracking, distributed
    ("pseudo",),
    ("methods",),
    ("runner",),  # library API: build a config, run a method's stages, load and evaluate a run
    ("listening",),  # the listening evaluation of a run
    ("inference",),  # users' own videos: predictor, segment, video, preview; run reports
    ("scoring", "bench", "demo"),
    ("cli",),
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}

# Function-level imports of avseg modules that stay lazy, and why.
LAZY_ALLOWED: dict[str, str] = {}


def package_of(module: str) -> str:
    """``avseg.data.avsbench`` -> ``data``; ``avseg.cli`` -> ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported avseg module, line, inside a function) for every import statement of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    this = module_name(path)
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = this.split(".")[: -node.level] if not path.name == "__init__.py" else this.split(".")[: len(this.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "avseg" or module.startswith("avseg."):
                # `from avseg import weights` imports the module avseg.weights
                targets = [f"{module}.{a.name}" if module == "avseg" else module for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name == "avseg" or a.name.startswith("avseg.")]
        found += [(t, node.lineno, id(node) in in_function) for t in targets]
    return found


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> ["file:line", ...] for imports across packages."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(SRC.rglob("*.py")):
        source = package_of(module_name(path))
        for target, line, _ in imports(path):
            dest = package_of(target)
            if dest and dest != source:
                edges[(source, dest)].append(f"{path.relative_to(SRC.parent)}:{line}")
    return edges


def cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_every_package_has_a_layer() -> None:
    packages = {package_of(module_name(p)) for p in SRC.rglob("*.py")} - {""}
    assert not packages - set(RANK), f"add to LAYERS: {sorted(packages - set(RANK))}"


def test_imports_flow_downward_without_circles() -> None:
    edges = package_edges()
    upward = [f"{a} -> {b} ({', '.join(where)})" for (a, b), where in sorted(edges.items()) if a in RANK and b in RANK and RANK[b] >= RANK[a]]
    circles = [" -> ".join(c) for c in cycles(edges)]
    assert not upward and not circles, "imports that do not flow downward:\n" + "\n".join(upward + circles)


def test_no_function_level_imports_of_avseg_modules_without_a_reason() -> None:
    lazy = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).as_posix()
        lazy += [f"{rel}:{line}: {target}" for target, line, inside in imports(path) if inside and f"{rel}:{target}" not in LAZY_ALLOWED]
    assert not lazy, "import at module level (or add to LAZY_ALLOWED with the reason):\n" + "\n".join(lazy)


def main() -> int:
    edges = package_edges()
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    for layer in reversed(LAYERS):
        for name in layer:
            deps = sorted(graph.get(name, ()), key=lambda d: (-RANK.get(d, -1), d))
            bad = [d for d in deps if RANK.get(d, 99) >= RANK[name]]
            print(f"{RANK[name]:2d} {name:10s} -> {', '.join(deps) or '-'}" + (f"   UPWARD: {', '.join(bad)}" if bad else ""))
    circles = cycles(edges)
    print("circles:", "; ".join(" -> ".join(c) for c in circles) or "none")
    lazy = sum(1 for p in SRC.rglob("*.py") for _, _, inside in imports(p) if inside)
    print("function-level imports of avseg modules:", lazy)
    return 1 if circles else 0


# --- file writes go through the atomic writers ------------------------------------------------------------------
# Writing a file that users or later stages read goes through the atomic writers; these are the only
# places allowed to open a file for writing directly (the atomic helpers themselves, the append-only
# JSON-lines log whose torn last line is dropped on resume, and writers that fill a temporary file that
# is renamed into place).
WRITE_ALLOWED = {
    "fileio.py": "atomic_path / atomic_write_bytes themselves",
    "engine/checkpoint.py": "torch.save / safetensors into the temporary file of fileio.atomic_path",
    "engine/tracking.py": "JsonlWriter appends; a torn last line is ignored and truncated on resume",
    "inference/segment.py": "the overlay MP4 is muxed into a temporary file renamed on close",
    "data/cache.py": "arrays are written under temporary names and renamed; index.json last",
}
WRITE_PATTERN = re.compile(r"""\.write_text\(|\.write_bytes\(|\bopen\([^)]*["'][wax]b?\+?["']|torch\.save\(|np\.save\(|\.tofile\(|av\.open\([^)]*["']w["']""")


def test_no_direct_file_writes_outside_the_atomic_writers() -> None:
    src = Path(__file__).resolve().parents[1] / "src" / "avseg"
    offenders = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        if rel in WRITE_ALLOWED:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if WRITE_PATTERN.search(code):
                offenders.append(f"{rel}:{i}: {line.strip()}")
    assert not offenders, "write through the avseg.fileio / avseg.data.imageio atomic helpers:\n" + "\n".join(offenders)


if __name__ == "__main__":
    sys.exit(main())
