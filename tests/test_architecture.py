"""The package's shape: role packages whose imports only go down, no import cycle, no ``sys.path``
edits, a flat public API, every package folder installed, the public API annotated.

The imports are read with ``ast`` from every module of ``deepnmf_jax`` and of ``configs/`` (installed
as ``deepnmf_jax.configs``): every ``import`` and ``from ... import`` of the package's own modules,
wherever it stands (in a function, under ``TYPE_CHECKING``), is an edge.
"""

import ast
import pathlib
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "deepnmf_jax"

# The layers, bottom to top: a module may import from its own layer's packages (without a cycle)
# and from any layer below, never from one above.
RANKS = {
    "base": 0,  # deepnmf_jax/_*.py, errors, machine, config_files
    "core": 1,
    "nn": 2,
    "models": 3,
    "data": 3,
    "reference": 4,
    "training": 5,
    "pretrained": 6,
    "experiments": 6,
    "evaluation": 7,
    "configs": 7,
    "cli": 8,
    "shims": 9,  # the 0.1 module paths, kept for one minor version
    "api": 9,  # deepnmf_jax/__init__.py and __main__.py
}
SHIMS = {"nmf", "layers", "losses", "train_lib", "evaluate", "sweep"}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("deepnmf_jax", *parts))
        found[name.removesuffix(".__init__")] = path
    for path in (ROOT / "configs").rglob("*.py"):
        parts = path.relative_to(ROOT / "configs").with_suffix("").parts
        name = ".".join(("deepnmf_jax", "configs", *parts))
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def role(module: str) -> str:
    parts = module.split(".")
    if module == "deepnmf_jax" or parts[1:] == ["__main__"]:
        return "api"
    if parts[1] in SHIMS:
        return "shims"
    if parts[1] in RANKS:
        return parts[1]
    return "base"


def _resolve(module: str, level: int, target: str | None, is_package: bool) -> str:
    if level == 0:
        return target or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def imports(module: str) -> set[str]:
    """The package's own modules that ``module`` imports (a ``from X import Y`` counts ``X.Y``
    where that is a module, else ``X``)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node.level, node.module, path.name == "__init__.py")
            names = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source
                for alias in node.names
            ]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] == "deepnmf_jax"}
    return {name for name in found if name in MODULES} - {module}


GRAPH = {module: imports(module) for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, components, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_no_import_cycle():
    edges = sum(len(targets) for targets in GRAPH.values())
    assert len(MODULES) > 60 and edges > 150  # the walk saw the package
    assert _cycles(GRAPH) == []


def test_imports_only_go_down_the_layers():
    upward = [
        f"{module} ({role(module)}) imports {target} ({role(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if RANKS[role(target)] > RANKS[role(module)]
    ]
    assert upward == []


def test_nothing_below_the_api_imports_the_package_root_or_a_shim():
    offenders = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if role(target) in ("api", "shims") and role(module) not in ("api", "shims")
    ]
    assert offenders == []


def test_a_cycle_and_an_upward_import_are_caught():
    """The checks above can fail: a made-up graph with both faults."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert RANKS[role("deepnmf_jax.cli")] > RANKS[role("deepnmf_jax.core.nmf")]


@pytest.mark.parametrize("folder", ["deepnmf_jax", "configs"])
def test_no_sys_path_edits(folder):
    offenders = []
    for path in (ROOT / folder).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path":
                if isinstance(node.value, ast.Name) and node.value.id == "sys":
                    offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_flat_public_api():
    import deepnmf_jax as dnmf

    for name in (
        "nmf_fixed_point",
        "NMFOptions",
        "NMFConv",
        "PatchConv",
        "Mix1x1",
        "BatchNorm",
        "DeepNMF",
        "build_model",
        "train_and_evaluate",
        "pretrained",
        "nnx",
    ):
        assert hasattr(dnmf, name), name
    assert dnmf.nnx.NMFConv is not dnmf.NMFConv
    for name in dnmf.__all__:  # each loads on first use
        assert getattr(dnmf, name) is not None, name
    # the lazy loader's names are exactly the public ones
    loaded = {"__version__", *dnmf._SUBPACKAGES, *dnmf._ORIGINS}
    assert loaded == set(dnmf.__all__)
    assert set(dnmf.__all__) <= set(dir(dnmf))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        dnmf.nope  # noqa: B018


def test_the_command_line_starts_without_jax():
    """``import deepnmf_jax.cli`` (the ``deepnmf`` entry point) loads neither JAX nor the package's
    subpackages, so the command re-executes itself on tcmalloc before the second import costs
    anything (:mod:`deepnmf_jax._malloc`)."""
    import subprocess
    import sys

    code = (
        "import sys, deepnmf_jax.cli, deepnmf_jax\n"
        "heavy = [m for m in ('jax', 'flax', 'deepnmf_jax.core') if m in sys.modules]\n"
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_package_folder_is_installed():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {module for module, path in MODULES.items() if path.name == "__init__.py"}
    assert listed == folders


def test_old_module_paths_warn_for_one_minor_version():
    import importlib
    import sys

    for name in (
        "deepnmf_jax.nmf",
        "deepnmf_jax.layers",
        "deepnmf_jax.losses",
        "deepnmf_jax.train_lib",
    ):
        sys.modules.pop(name, None)
        with pytest.warns(DeprecationWarning, match=r"deprecated and will be removed in 0\.3"):
            importlib.import_module(name)


def test_modules_stay_small():
    """One job per module: none over ~300 lines (data files aside)."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in MODULES.values()
        if (n := len(path.read_text().splitlines())) > 330
    }
    assert long == {}
