"""docs/extending.md's templates, written out exactly as printed (an algorithm with its own
inner loss, a dataset, a backbone, each one file + one YAML in a directory of their own), train
through the documented command, and the run loads again for prediction."""
import os
import re
import subprocess
import sys

from tests.conftest import ROOT

DOC = ROOT / "docs" / "extending.md"


def files_and_command(text):
    """The doc's fenced blocks, each named by a `# <relative path>` among its first two lines,
    and its command."""
    files = {}
    for lang, body in re.findall(r"```(python|yaml)\n(.*?)```", text, re.S):
        path = re.search(r"^# (\S+\.(?:py|yaml))\b", "\n".join(body.splitlines()[:2]), re.M)
        assert path, f"a {lang} block of {DOC.name} names no '# <path>': {body[:80]!r}"
        files[path.group(1)] = body
    command = re.search(r"```bash\n(.*?# run by tests/test_extending\.py)\n```", text, re.S)
    return files, command.group(1).replace("\\\n", " ").split("#")[0]


def test_the_documented_algorithm_dataset_and_backbone_train_and_predict(tmp_path):
    files, command = files_and_command(DOC.read_text())
    assert {"mylab/smooth_maml.py", "my-configs/algorithm/smooth_maml.yaml", "mylab/stripes.py",
            "my-configs/dataset/stripes.yaml", "mylab/tiny_cnn.py",
            "my-configs/backbone/tiny_cnn.yaml"} <= set(files)
    for rel, body in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(body)
    run = tmp_path / "run"
    command = command.replace("python train.py", f"{sys.executable} {ROOT / 'train.py'}")
    fast = f" debug=fast trainer.iterations=6 task.shots=2 hydra.run.dir={run}"
    env = {**os.environ, "METALEARN_OUTPUT_DIR": str(tmp_path / "outputs")}
    proc = subprocess.run(["bash", "-c", command + fast], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (run / "config.yaml").read_text()
    for target in ("mylab.smooth_maml.SmoothMAML", "mylab.stripes.load_stripes",
                   "mylab.tiny_cnn.TinyCNN"):
        assert target in config
    assert "smoothing: 0.2" in config and (run / "results.json").is_file()
    # loading it again runs the classes it names: refused until they are allowed, as the doc says
    load = ("from metalearn.inference import load; from mylab.stripes import load_stripes; "
            f"m = load({str(run)!r}); t = load_stripes().test; x = list(t.images[::10][:5]); "
            "p = m.adapt(x, ['a', 'b', 'c', 'd', 'e']).predict(x); print(p.labels)")
    refused = subprocess.run([sys.executable, "-c", load], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300, env={**env, "PYTHONPATH": str(tmp_path)})
    assert refused.returncode != 0 and "mylab" in refused.stderr
    allowed = subprocess.run([sys.executable, "-c", load], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300,
                             env={**env, "PYTHONPATH": str(tmp_path),
                                  "METALEARN_ALLOW_TARGETS": "mylab.*"})
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "'a'" in allowed.stdout
