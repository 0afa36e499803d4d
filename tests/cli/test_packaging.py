"""Packaging: `python -m build` makes an sdist and a wheel (the wheel built from the sdist, so the
sdist holds everything), each installs into a fresh virtual environment and runs; and shell
completion (click's) answers.

Offline, so that it runs anywhere the suite does: the build uses the dev environment's setuptools
(`--no-isolation`; `build`, `setuptools` and `wheel` are in the dev extra), and the fresh
environments see the dev environment's site-packages through a `.pth` line for tcpulse's
dependencies only (a `.pth` file in a directory added that way is not run, so the dev
environment's editable tcpulse stays out); tcpulse itself comes from the wheel or the sdist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.packaging, pytest.mark.slow]


def sh(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=120,
                       env={**os.environ, **(env or {})})
    assert r.returncode == 0, f"{args}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def fresh_venv(path: Path) -> Path:
    """A new virtual environment without tcpulse; the dev environment's packages (tcpulse's
    dependencies, setuptools for the sdist) reachable through a .pth line."""
    sh(sys.executable, "-m", "venv", "--without-pip", path)
    py = path / "bin" / "python"
    site = Path(sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "dev-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return py


def pip_install(py: Path, what: Path) -> None:
    sh(sys.executable, "-m", "pip", "--python", py, "install", "--quiet", "--disable-pip-version-check",
       "--no-deps", "--no-index", "--no-build-isolation", what)


def check_installed(py: Path, venv: Path) -> None:
    where = sh(py, "-c", "import tcpulse; print(tcpulse.__file__)").strip()
    assert where.startswith(str(venv)), where  # this copy, not the checkout's
    tcpulse = venv / "bin" / "tcpulse"
    assert sh(tcpulse, "--version").strip().startswith("tcpulse, version")
    # What the package carries beside its code: the compiled catalog, the dashboard, py.typed.
    assert sh(py, "-c", "import tcpulse.i18n as i; print(i.set_language('zh'))").strip() == "zh"
    sh(py, "-c", "from importlib.resources import files; r = files('tcpulse');"
                 "assert (r / 'admin/static/index.html').is_file() and (r / 'py.typed').is_file()")


def test_build_makes_a_wheel_and_an_sdist_that_install_and_run(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.mo", "*.db*", "test-artifacts",
        ".hypothesis", "fuzz-corpus"))
    dist = tmp_path / "dist"
    sh(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, src)
    [wheel] = dist.glob("tcpulse-*.whl")
    [sdist] = dist.glob("tcpulse-*.tar.gz")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {"tcpulse/i18n/locale/zh/LC_MESSAGES/tcpulse.mo", "tcpulse/py.typed", "tcpulse/alerts/__init__.py",
            "tcpulse/admin/static/dashboard.css"} <= names
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    with zipfile.ZipFile(wheel) as z:
        requires = [ln for ln in z.read(meta).decode().splitlines() if ln.startswith("Requires-Dist:")]
    assert any(r.startswith("Requires-Dist: aiohttp") and "extra" not in r for r in requires), requires
    with tarfile.open(sdist) as t:
        assert any(n.endswith("/setup.py") for n in t.getnames())
        assert any(n.endswith("LC_MESSAGES/tcpulse.po") for n in t.getnames())
    for artifact, name in ((wheel, "from-wheel"), (sdist, "from-sdist")):
        venv = tmp_path / name
        py = fresh_venv(venv)
        pip_install(py, artifact)
        check_installed(py, venv)


def test_shell_completion_answers() -> None:
    tcpulse = Path(sys.executable).with_name("tcpulse")
    out = sh(tcpulse, env={"_TCPULSE_COMPLETE": "bash_source"})  # what README's eval line loads
    assert "_tcpulse_completion" in out and "complete " in out
    # As bash asks for `tcpulse serve --webh<TAB>`.
    out = sh(tcpulse, env={"_TCPULSE_COMPLETE": "bash_complete", "COMP_WORDS": "tcpulse serve --webh",
                           "COMP_CWORD": "2"})
    assert "plain,--webhook" in out.splitlines()
