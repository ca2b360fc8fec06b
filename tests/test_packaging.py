"""A normal (non-editable) install is one import package that ships every native and kernel source.

Builds a wheel from this checkout, installs it into a fresh virtual environment, and from a
directory outside the repository trains 3 steps: the native CPU path must build from the shipped
sources (no "native CPU path is off" warning), and no top-level `models` or `kernels` may exist.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, **kw):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{cmd} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # from a copy of the files git would commit: a build/ or *.egg-info left in the checkout by an
    # earlier build can smuggle in files the package data does not declare
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    files = _run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT).stdout.split("\n")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, src])
    (whl,) = out.glob("minigrad-*.whl")
    return whl


def test_wheel_is_one_package_with_every_source(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"minigrad"}
    shipped = set(names)
    needed = [p for p in (ROOT / "kernels").rglob("*") if p.suffix in (".cu", ".cpp", ".h", ".hpp")]
    assert needed, "the kernels tree holds no sources?"
    missing = [str(p.relative_to(ROOT)) for p in needed
               if "minigrad/kernels/" + str(p.relative_to(ROOT / "kernels")) not in shipped]
    assert not missing, f"sources not shipped in the wheel: {missing}"
    modules = [("minigrad/" + str(p.relative_to(ROOT / "minigrad"))) for p in (ROOT / "minigrad").rglob("*.py")]
    modules += [f"minigrad/{top}/" + str(p.relative_to(ROOT / top)) for top in ("models", "kernels")
                for p in (ROOT / top).rglob("*.py")]
    unshipped = [m for m in modules if "__pycache__" not in m and m not in shipped]
    assert not unshipped, f"modules not shipped in the wheel (a subpackage missing from pyproject?): {unshipped}"


def test_installed_wheel_trains_natively_from_outside_the_repo(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", wheel])
    # numpy (the one dependency) from this environment; a .pth line is a plain path entry, so no
    # editable-install finder of this environment is activated in the new one
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "numpy_from_test.pth").write_text(str(Path(np.__file__).parents[1]) + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    corpus = outside / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question. " * 200)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MINIGRAD_CPU_NATIVE", "MINIGRAD_IMPL")}
    env.update(MINIGRAD_CACHE_DIR=str(tmp_path / "cache"), MINIGRAD_DATA_DIR=str(tmp_path / "data"))

    probe = _run([py, "-c", "import minigrad, importlib.util as u; print(minigrad.__file__); "
                  "print(u.find_spec('models'), u.find_spec('kernels'))"], cwd=outside, env=env).stdout.split("\n")
    assert str(site) in probe[0], f"minigrad imported from {probe[0]}, not the installed wheel"
    assert probe[1] == "None None", f"top-level packages importable after the install: {probe[1]}"

    res = _run([venv / "bin" / "minigrad", "train", "--data", corpus, "--out-dir", outside / "run",
                "--max-iters", 3, "--eval-interval", 3, "--eval-iters", 1, "--final-eval-iters", 1,
                "--n-layer", 1, "--n-embd", 32, "--n-head", 2, "--block-size", 16, "--batch-size", 4,
                "--quiet"], cwd=outside, env=env)
    assert "native CPU path is off" not in res.stderr, res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("val_loss=")
    assert list((tmp_path / "cache" / "cpu").glob("*.so")), "the native CPU library was not built"
