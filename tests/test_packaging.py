"""The user's folders are installed under `cotrain.` and nowhere else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def test_every_package_folder_is_listed_in_pyproject() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools["package-dir"]
    listed = set(setuptools["packages"])
    roots = {folder: name for name, folder in package_dir.items()}
    found = set()
    for folder, name in roots.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found == listed


def test_generic_top_level_names_are_not_importable_outside_the_repo(tmp_path: Path) -> None:
    code = (
        "import importlib.util as u, cotrain.workloads, cotrain.controllers, cotrain.power_modes\n"
        "print([n for n in ('workloads', 'controllers', 'power_modes') if u.find_spec(n)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


SERVE_EXTRA_MODULES = ("tritonclient", "grpc", "uvicorn", "httptools", "uvloop", "prometheus_client")


def test_a_run_without_ingress_needs_nothing_from_the_serve_extra(tmp_path: Path) -> None:
    """`make demo` installs cotrain without `cotrain[serve]`: validate and run of a config with no
    ingress must not import the front end's packages (here made unimportable in the runtime)."""
    import yaml

    from tests.conftest import TINY

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({**TINY, "duration_s": 1}))
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in SERVE_EXTRA_MODULES)
    script = (
        f"import sys; {blocked}; from cotrain.cli import main; "
        f"sys.exit(main(['validate', {str(config)!r}]) or main(['run', {str(config)!r}, "
        f"'--out', {str(tmp_path / 'run')!r}, '--quiet']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "summary.json").exists()
