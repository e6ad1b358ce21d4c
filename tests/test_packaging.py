"""What `pip install .` gives: every config inside the wheel, the console commands; debug=."""
import shutil
import subprocess
import sys
import tomllib
import zipfile

from hydra import compose, initialize_config_module

from tests.conftest import ROOT


def test_the_wheel_holds_every_config_and_the_console_commands(tmp_path):
    src = tmp_path / "src"  # a clean copy: setuptools would reuse a stale build/ in the clone
    for name in ("metalearn", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / name).is_dir() else {}))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-build-isolation", "-w", str(tmp_path), str(src)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("metalearn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {str(p.relative_to(ROOT)) for p in (ROOT / "metalearn" / "configs").rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"metalearn-train", "metalearn-eval", "metalearn-predict"} <= set(scripts)
    for name, target in scripts.items():
        assert f"{name} = {target}" in entry_points


def test_debug_fast_wins_over_a_preset_and_keeps_its_data():
    with initialize_config_module("metalearn.configs", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=omniglot_5w1s_cpu", "debug=fast"],
                      return_hydra_config=True)
    tc = cfg.trainer
    assert (tc.iterations, tc.meta_batch_size, tc.val_episodes, tc.test_episodes) == (4, 2, 4, 6)
    assert cfg.device == "cpu" and cfg.hydra.runtime.choices.logger == "none"
    assert cfg.hydra.runtime.choices.dataset == "omniglot"  # the preset's data, checked for real
