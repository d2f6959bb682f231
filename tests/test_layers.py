"""The package's layering, read from the source: every import, at run time or for types.

Each folder of ``k4sinit/`` is a layer and may import only the layers listed for
it in :data:`ALLOWED` (and itself). The rule covers module-level imports,
imports inside functions (the CLI's lazy ones) and ``if TYPE_CHECKING:``
imports alike, since a type-only import still couples the modules. A second
test fails on any import cycle between modules, and a third keeps trio and
pyroute2 out of the pure core. The last ones run the CLI's client commands in a
fresh interpreter: they load no trio (the control client is synchronous).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from k4sinit.core.graph import find_cycles_in

PACKAGE = Path(__file__).resolve().parent.parent / "k4sinit"

#: Layer -> the layers it may import, lowest first. "k4sinit" is the package's
#: own ``__init__`` (the version), which any layer may read.
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "host": frozenset({"core"}),
    "config": frozenset({"core"}),
    "supervision": frozenset({"core", "host"}),
    "network": frozenset({"core", "host"}),
    "services": frozenset({"core"}),
    "node": frozenset({"core", "host", "config", "services", "network", "supervision"}),
    "control": frozenset({"core", "supervision", "network", "node"}),
    "pid1": frozenset(
        {"core", "host", "config", "supervision", "network", "services", "node", "control"}
    ),
    "daemon": frozenset(
        {"core", "host", "config", "supervision", "network", "services", "node", "control", "pid1"}
    ),
    "cli": frozenset(
        {
            *("core", "host", "config", "supervision", "network", "services", "node"),
            *("control", "pid1", "daemon"),
        }
    ),
}
ANYONE_MAY_IMPORT = frozenset({"k4sinit"})
#: Third-party packages the pure core must not load (it runs in the CLI and in
#: tests without an event loop, and is meant to be cheap to import).
NOT_IN_CORE = ("trio", "pyroute2", "cryptography", "psutil")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, wherever it is written."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from k4sinit.node import roles` imports a module
                yield node.lineno, f"{module}.{alias.name}"


def internal_imports(path: Path, known: dict[str, Path]) -> Iterator[tuple[int, str]]:
    """The imports of ``path`` that name a module of k4sinit (most specific name)."""
    for line, module in imports(path):
        if module in known and module != module_name(path):
            yield line, module


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "k4sinit"
    return parts[1]


def test_every_folder_and_top_module_has_a_layer() -> None:
    found = {layer(m) for m in modules()} - {"k4sinit", "__main__"}
    assert found == set(ALLOWED), "a new folder needs its place in ALLOWED"


def test_the_layers_themselves_form_no_cycle() -> None:
    assert find_cycles_in({name: set(deps) for name, deps in ALLOWED.items()}) == []


def test_imports_respect_the_layers() -> None:
    known = modules()
    violations = []
    for module, path in known.items():
        own = layer(module)
        if own in ("k4sinit", "__main__"):
            continue
        for line, target in internal_imports(path, known):
            theirs = layer(target)
            if theirs == own or theirs in ANYONE_MAY_IMPORT or theirs in ALLOWED[own]:
                continue
            violations.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {own} imports {target}")
    assert violations == []


def test_no_import_cycles_between_modules() -> None:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for _, target in internal_imports(path, known):
            edges[module].add(target)
    assert find_cycles_in(edges) == []


@pytest.mark.parametrize("third_party", NOT_IN_CORE)
def test_the_core_loads_no_event_loop_or_system_library(third_party: str) -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for module, path in modules().items()
        if layer(module) == "core"
        for line, target in imports(path)
        if target == third_party or target.startswith(third_party + ".")
    ]
    assert offenders == []


# --- what the CLI's client loads ----------------------------------------------------

#: Packages a client command must not load: the event loop, the daemon's libraries and
#: the config's YAML (start-up time of `k4sinit status`, `k4sinit --help`).
NOT_IN_CLIENT = ("trio", "pyroute2", "cryptography", "yaml")

LOADED = """
import sys
{body}
print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}})))
"""


def loaded_by(body: str) -> set[str]:
    """The top-level packages that a fresh interpreter has loaded after ``body``."""
    done = subprocess.run(
        [sys.executable, "-c", LOADED.format(body=textwrap.dedent(body))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PACKAGE.parent,
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_the_control_client_loads_no_event_loop() -> None:
    assert loaded_by("import k4sinit.control.client, k4sinit.control") & set(NOT_IN_CLIENT) == set()


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["status", "--help"],
        ["status", "--socket", "/nonexistent/k4sinit/control.sock"],
        ["logs", "a", "--socket", "/nonexistent/k4sinit/control.sock"],
        ["stop", "--all", "--socket", "/nonexistent/k4sinit/control.sock"],
        ["analyze", "plot", "--socket", "/nonexistent/k4sinit/control.sock"],
    ],
)
def test_the_cli_client_commands_load_no_event_loop(argv: list[str]) -> None:
    body = f"""
        import contextlib
        from k4sinit.cli import main
        with contextlib.redirect_stdout(None), contextlib.redirect_stderr(None):
            try:
                main({argv!r})
            except SystemExit:
                pass
        """
    assert loaded_by(body) & set(NOT_IN_CLIENT) == set()


def test_help_loads_the_parser_alone() -> None:
    """``k4sinit --help`` loads neither the control client nor the specs (its start-up)."""
    body = """
        import contextlib, io
        from k4sinit.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(["--help"])
            except SystemExit:
                pass
        print(" ".join(m for m in sys.modules if m.startswith("k4sinit.")), file=sys.stderr)
        """
    done = subprocess.run(
        [sys.executable, "-c", LOADED.format(body=textwrap.dedent(body))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PACKAGE.parent,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stderr.split()) == [
        "k4sinit.cli",
        "k4sinit.cli.main",
        "k4sinit.cli.parser",
        "k4sinit.core",
        "k4sinit.core.reserved",
    ]


# --- what `k4sinit run` loads ---------------------------------------------------------

COMPOSE = """
    import trio
    from k4sinit.config import load_config
    from k4sinit.core import log
    from k4sinit.daemon import root

    options = root.Options.run({socket!r}, cgroups=False)
    prepared = root.prepare(root.plan(load_config({config!r}), options), options, log.get_logger())

    async def compose() -> None:
        daemon = root.compose(prepared, options, log.get_logger())
        print(type(daemon.network).__name__, type(daemon.pki).__name__, file=sys.stderr)

    trio.run(compose)
    """


@pytest.mark.parametrize(
    ("depends", "network", "loads_pyroute2"),
    [("", "HostNetwork", False), ("    dependsOn: {network: Ready}\n", "Network", True)],
)
def test_run_of_plain_services_loads_no_network_or_pki_library(
    tmp_path: Path, depends: str, network: str, loads_pyroute2: bool
) -> None:
    """Without a node or network section, nor a service waiting for the network,
    ``run`` takes the host's network as it is: no pyroute2, and no cryptography."""
    config = tmp_path / "config.yaml"
    config.write_text(f"services:\n  a:\n    command: [sleep, '1']\n{depends}")
    body = COMPOSE.format(socket=str(tmp_path / "control.sock"), config=str(config))
    done = subprocess.run(
        [sys.executable, "-c", LOADED.format(body=textwrap.dedent(body))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PACKAGE.parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.split() == [network, "AlwaysReady"]
    loaded = set(done.stdout.split())
    assert "cryptography" not in loaded
    assert ("pyroute2" in loaded) == loads_pyroute2
