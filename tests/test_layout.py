"""The house rules a newcomer relies on, checked on the source: files and functions a person can
hold, no import cycles, and drivers that import only the public RL API, roles and core."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("warm_ray", "actors", "tune")
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
# one documented dataclass per stage: the config module may be longer (see docs/architecture.md)
LONG_FILES_ALLOWED = {"warm_ray/config.py"}
# the drivers: each may call another's entry point (a study runs `warm-ray warm` and `warm-ray warp`),
# never its helpers; the study's modules are one driver
DRIVERS = {"actors.warm": {"run_warm"}, "actors.rlhf": {"run_rl_comparison"}, "actors.warp": {"run_warp"},
           "actors.study": {"run_study", "claim_specs"}, "actors.study_rl": {"run_rl_arms", "run_warp_fronts"},
           "actors.study_report": {"demo_summary"}, "tune.sweep": {"run_sweep"}}
STUDY = {"actors.study", "actors.study_rl", "actors.study_report"}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in the file, late ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [a.name for a in node.names if f"{node.module}.{a.name}" in known]
            out += [(f"{node.module}.{s}", []) for s in subs]
            rest = [a.name for a in node.names if a.name not in subs]
            if rest:
                out.append((node.module, rest))
    return [(m, names) for m, names in out if m in known]


def test_files_and_functions_stay_a_size_a_person_can_hold():
    too_long, long_functions = [], []
    for name, path in modules().items():
        rel = str(path.relative_to(ROOT))
        lines = len(path.read_text().splitlines())
        if lines > MAX_FILE_LINES and rel not in LONG_FILES_ALLOWED:
            too_long.append(f"{rel}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, f"files over {MAX_FILE_LINES} lines: {too_long}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_no_import_cycles():
    known = modules()
    graph = {m: {dep for dep, _ in imports(p, known) if dep != m} for m, p in known.items()}
    # a package's submodules import each other, never the package's own public face
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for dep in sorted(graph[m]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]) if dep in stack else f"{m} -> {dep}")
            elif dep not in state:
                visit(dep, stack + [dep])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def test_drivers_import_the_public_rl_api_and_no_other_drivers_helpers():
    known = modules()
    faults = []
    for m in DRIVERS:
        for dep, names in imports(known[m], known):
            if dep.startswith("actors.rl."):
                faults.append(f"{m} imports {dep}: use the public RL API, actors.rl")
            elif dep in DRIVERS and dep != m and not ({m, dep} <= STUDY):
                helpers = [n for n in names if n not in DRIVERS[dep]]
                if helpers or not names:
                    faults.append(f"{m} imports {helpers or dep} from the driver {dep}")
    assert not faults, faults


@pytest.mark.parametrize("bench", sorted((ROOT / "bench").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_use_the_public_rl_api(bench):
    known = modules()
    private = [dep for dep, _ in imports(bench, known) if dep.startswith("actors.rl.") or dep == "actors.rlhf"]
    assert not private, f"{bench.name} imports {private}: use actors.rl"
