"""The dependency direction of docs/architecture.md, checked by reading every module's imports (no cycles)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "qkv"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def qkv_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qkv"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("qkv"))
    return found


GRAPH = {module_name(p): qkv_imports(p) for p in SRC.rglob("*.py")}


def imports_of(prefix: str) -> set[str]:
    return {
        target
        for mod, targets in GRAPH.items()
        if mod == prefix or mod.startswith(prefix + ".")
        for target in targets
    }


def touches(targets: set[str], prefix: str) -> bool:
    return any(t == prefix or t.startswith(prefix + ".") for t in targets)


def test_nn_imports_nothing_of_qkv_but_config() -> None:
    outside = {t for t in imports_of("qkv.nn") if not t.startswith("qkv.nn")}
    assert all(t == "qkv.config" or t.startswith("qkv.config.") for t in outside), outside


def test_data_tokenize_and_checkpoint_import_no_model_code() -> None:
    for low in ("qkv.data", "qkv.tokenize", "qkv.checkpoint"):
        targets = imports_of(low)
        for high in ("qkv.nn", "qkv.models", "qkv.decode", "qkv.train", "qkv.cli"):
            assert not touches(targets, high), f"{low} imports {high}"


def test_decode_and_train_never_import_each_other() -> None:
    assert not touches(imports_of("qkv.decode"), "qkv.train")
    assert not touches(imports_of("qkv.train"), "qkv.decode")


def test_nothing_imports_the_cli() -> None:
    for mod, targets in GRAPH.items():
        if not touches({mod}, "qkv.cli") and mod != "qkv.__main__":
            assert not touches(targets, "qkv.cli"), mod


def test_there_are_no_import_cycles() -> None:
    modules = set(GRAPH)
    edges = {m: {t for t in GRAPH[m] if t in modules and t != m} for m in modules}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in edges[m]:
            # A package's __init__ re-exporting its own submodules is not a cycle.
            if n.startswith(m + ".") or m.startswith(n + "."):
                continue
            assert state.get(n) != 1, " -> ".join([*path, m, n])
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [])


def test_infer_imports_only_the_parts_and_the_seq2seq_types() -> None:
    """qkv.infer prepares weights under the one layer definition: it reads qkv.nn and the seq2seq model's
    types, never the searches, training, data, files or the command line."""
    allowed = ("qkv.config", "qkv.nn", "qkv.infer", "qkv.models.seq2seq")
    for target in imports_of("qkv.infer"):
        assert any(target == a or target.startswith(a + ".") for a in allowed), target


def test_nn_knows_nothing_of_inference_backends() -> None:
    assert not touches(imports_of("qkv.nn"), "qkv.infer")
