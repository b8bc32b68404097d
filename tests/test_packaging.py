"""Packaging: the declared requirements cover the package's imports, and a wheel built from the
tree, installed non-editable into a fresh virtual environment, lists its bundled recipes and
trains the demo from a folder outside the repository (about 20 s on 2 CPU cores: build and install
2 s, two demo steps with test renders and the mesh export 14 s)."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path


from conftest import REPO_ROOT, TINY_OVERRIDES

PACKAGE = Path(REPO_ROOT) / "threestudio_like"

# Import name -> distribution name, where they differ.
DISTRIBUTION_OF = {
    "PIL": "Pillow",
    "yaml": "PyYAML",
    "mcubes": "PyMCubes",
    "cv2": "opencv-python-headless",
    "pytorch_lightning": "pytorch-lightning",
    "huggingface_hub": "huggingface_hub",
    "pxr": "usd-core",
}
# Imported only inside ``try`` with a fallback, and installed by a documented separate step
# (README: tiny-cuda-nn's torch bindings build from git source with nvcc).
SEPARATE_INSTALL = {"tinycudann"}


def _setup_requirements():
    """``(install_requires, extras_require)`` of setup.py, read without running it."""
    tree = ast.parse((Path(REPO_ROOT) / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kwargs = {k.arg: k.value for k in call.keywords}
    return ast.literal_eval(kwargs["install_requires"]), ast.literal_eval(kwargs["extras_require"])


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ @]", requirement, maxsplit=1)[0].strip()


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_imports():
    """Top-level modules the package imports (anywhere in a file), minus stdlib and itself."""
    found = {}
    for file in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "threestudio_like":
                    found.setdefault(top, file.relative_to(REPO_ROOT).as_posix())
    return found


def test_every_direct_import_is_declared():
    install, extras = _setup_requirements()
    declared = {_normal(_name(r)) for r in install}
    optional = {_normal(_name(r)) for reqs in extras.values() for r in reqs}
    missing = {
        module: where for module, where in _third_party_imports().items()
        if module not in SEPARATE_INSTALL
        and _normal(DISTRIBUTION_OF.get(module, module)) not in declared | optional
    }
    assert not missing, f"imported but not declared in setup.py (module: first file): {missing}"


def test_requirements_install_from_the_index_and_bound_diffusers():
    install, extras = _setup_requirements()
    every = install + [r for reqs in extras.values() for r in reqs]
    assert not [r for r in every if _normal(_name(r)) == "tinycudann"], "tinycudann is not on PyPI"
    names = {_normal(_name(r)) for r in install}
    assert {"huggingface-hub", "pillow"} <= names
    diffusers = next(r for r in install if _normal(_name(r)) == "diffusers")
    assert "<1" in diffusers.replace(" ", ""), diffusers  # attention processors use its internals
    from importlib.metadata import version

    major, minor = (int(x) for x in version("diffusers").split(".")[:2])
    assert (major, minor) >= (0, 30) and major < 1  # the installed one satisfies the range


def test_recipes_lookup_order_listing_and_show_config(tmp_path, monkeypatch, capsys):
    from threestudio_like import cli, config, recipes

    bundled = tmp_path / "site" / "threestudio_like" / "_recipes"  # as an installed wheel has it
    bundled.mkdir(parents=True)
    shutil.copy(Path(REPO_ROOT, "configs", "demo.yaml"), bundled / "demo.yaml")
    (bundled / "shipped.yaml").write_text("# Shipped with the package.\nname: shipped\n")
    monkeypatch.setattr(recipes, "BUNDLED_RECIPES", bundled)
    monkeypatch.chdir(tmp_path)  # no ./configs/ yet: only the bundled recipes answer
    assert config.find_config_file("demo") == bundled / "demo.yaml"
    assert config.find_config_file("configs/shipped.yaml") == bundled / "shipped.yaml"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "shipped.yaml").write_text("name: mine\n")  # ./configs/ comes first
    assert config.find_config_file("shipped.yaml") == Path("configs/shipped.yaml").absolute()

    assert cli.main(["--recipes"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^demo\.yaml +The CPU demo", out, re.M) and re.search(r"^shipped\.yaml *$", out, re.M)
    assert cli.main(["--show-config", "demo", "trainer.max_steps=3", "exp_root_dir=runs"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"# {bundled / 'demo.yaml'}") and "max_steps: 3" in shown
    assert cli.main(["--show-config", "demoo.yaml"]) == 2
    assert "Did you mean 'demo.yaml'" in capsys.readouterr().err


def _fresh_venv(tmp: Path) -> Path:
    """A venv without pip that reuses this interpreter's site-packages for the dependencies."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    parents = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    # a path line only: the parent's own .pth files (an editable install of the package) stay off
    Path(purelib, "_parent_site.pth").write_text("\n".join(parents) + "\n")
    return venv


def _build_wheel(tmp: Path) -> Path:
    """A wheel of a clean copy of the tree (no stale build/ folder, the checkout left untouched)."""
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("threestudio_like", "configs"):
        shutil.copytree(Path(REPO_ROOT) / name, src / name, ignore=ignore)
    for name in ("setup.py", "README.md", "MANIFEST.in"):
        shutil.copy(Path(REPO_ROOT) / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    str(src), "-w", str(tmp / "wheels")], check=True, cwd=tmp)
    (wheel,) = (tmp / "wheels").glob("threestudio_like-*.whl")
    return wheel


def test_wheel_installs_with_recipes_and_trains_the_demo(tmp_path):
    started = time.perf_counter()
    wheel = _build_wheel(tmp_path)
    venv = _fresh_venv(tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                    "--quiet", "--no-deps", "--no-index", str(wheel)], check=True)
    installed = time.perf_counter()
    elsewhere = tmp_path / "elsewhere"  # no configs/ here: only the bundled recipes can answer
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONNOUSERSITE"] = "1"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "threestudio-like"), *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=600)

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import threestudio_like; print(threestudio_like.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv)), where  # the wheel's copy, not the checkout

    listed = cli("--recipes")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^demo\.yaml +The CPU demo", listed.stdout, re.M), listed.stdout
    assert "mvdream-sd21.yaml" in listed.stdout and "_recipes" in listed.stdout
    shown = cli("--show-config", "configs/demo.yaml", "trainer.max_steps=2")
    assert shown.returncode == 0 and "max_steps: 2" in shown.stdout, shown.stderr

    overrides = [o for o in TINY_OVERRIDES if not o.startswith("trainer.max_steps=")]
    run = cli("--config", "demo.yaml", "--train", "trainer.max_steps=2", "exp_root_dir=outputs",
              "use_timestamp=false", *overrides)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    trial = elsewhere / "outputs" / "demo" / "reference-object"
    assert (trial / "ckpts" / "last.ckpt").is_file()
    assert (trial / "configs" / "parsed.yaml").is_file()
    assert (trial / "save" / "preview.html").is_file()  # the run's 3D preview page
    # the preview's pinned npm project and validator script ship in the wheel
    assert cli("--preview-assets", "--where").returncode == 0
    assert (Path(where.strip()).parent / "preview" / "validate.cjs").is_file()
    done = time.perf_counter()
    print(f"\nwheel build + install: {installed - started:.1f} s; 2-step demo: {done - installed:.1f} s")
