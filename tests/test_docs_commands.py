"""Every command in README.md and docs/*.md still composes, so the docs cannot drift from configs.

What counts as a command: in fenced code blocks, every line (after joining `\\` continuations)
that runs `train.py`, `metalearn-<app>`, `scripts/<name>.py` or `make train ARGS="..."`; in prose,
inline code that starts with one of those (optionally after `python`). Lines whose comment starts
with `# error` show a failure on purpose and are not collected; nor are those whose comment says
`# run by tests/<file>`, a test that sets up what the command needs and runs it.

How each is checked:
- the Hydra apps (`train.py`/`metalearn-train`, `scripts/evaluate.py`/`metalearn-eval`): their
  overrides are composed as `--cfg job` would (in-process, with the Hydra config, every value of a
  `-m` sweep), and the job config is resolved;
- any other script or console command: it must exist and answer `--help` with exit code 0;
- every repository path a command names (`scripts/...`, `sweeps/...`) must exist.

A block's `cat > ~/path <<'EOF'` heredocs are written (under a temporary $HOME) before its
commands compose, so an example that adds a config file is checked with that file.

Placeholders: `<same overrides>`, `<overrides>` and a lone `...` are dropped; any other `<...>` (a run dir, a
date, an id) becomes `x`; an optional `[key=value]` is kept without its brackets; `a|b` choices
inside it take the first. Flags that only change what Hydra prints or how it launches
(`--cfg X`, `-p X`, `--resolve`, `-m`/`--multirun`, `--info`, `--help`) are dropped.
"""
from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
# Hydra apps: how a command names them -> their config
HYDRA_APPS = {"train.py": "train", "metalearn-train": "train", "scripts/evaluate.py": "eval",
              "metalearn-eval": "eval"}
PROGRAM = re.compile(r"(?:^|/)(train\.py|scripts/[\w-]+\.py|metalearn-[\w-]+)$")
INLINE = re.compile(r"^(?:[A-Z_]+=\S+ )*(?:\S*python3? )?(?:\S*/)?(train\.py|scripts/[\w-]+\.py"
                    r"|metalearn-[\w-]+)(?: |$)|^make train ARGS=")
HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "-p", "--package", "--config-name", "-cn"}
HYDRA_FLAGS = {"--resolve", "-m", "--multirun", "--info", "-i", "--help", "-h", "--hydra-help"}


@dataclass
class Command:
    where: str
    text: str
    program: str
    args: list[str]
    files: dict[str, str] | None = None  # heredocs written earlier in the same code block

    def __str__(self):
        return f"{self.where}: {self.text}"


def _substitute(text: str) -> str:
    text = re.sub(r"<(?:same )?overrides>|(?<!\S)\.\.\.(?!\S)", "", text)
    text = re.sub(r"<[^<>]+>", "x", text)

    def optional(m: re.Match) -> str:  # [checkpoint=best|last] -> checkpoint=best
        key, _, value = m.group(1).partition("=")
        return f"{key}={value.split('|')[0]}" if value else key
    return re.sub(r"(?<![=\w])\[([\w.]+=?[^\s\]=]*)\]", optional, text)


def _parse(text: str, where: str) -> Command | None:
    tokens = shlex.split(_substitute(text), comments=True)
    if tokens[:2] == ["make", "train"]:
        args = [t.split("=", 1)[1] for t in tokens if t.startswith("ARGS=")]
        return Command(where, text, "train.py", shlex.split(_substitute(args[0])) if args else [])
    for i, tok in enumerate(tokens):
        m = PROGRAM.search(tok)
        if m:
            return Command(where, text, m.group(1), tokens[i + 1:])
    return None


def collect() -> list[Command]:
    found = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        in_block, joined, start, heredoc, files = False, "", 0, None, {}
        for n, line in enumerate(lines, 1):
            if heredoc is not None:  # `cat > path <<'EOF'` ... `EOF`
                if line.strip() == "EOF":
                    heredoc = None
                else:
                    files[heredoc] += line + "\n"
                continue
            if line.lstrip().startswith("```"):
                in_block, files = not in_block, {}
                continue
            target = re.match(r"\s*cat > (\S+) <<'EOF'$", line)
            if in_block and target:
                heredoc = target.group(1)
                files[heredoc] = ""
                continue
            if in_block:
                joined, start = (joined + " " if joined else "") + line.strip(), start or n
                if joined.endswith("\\"):
                    joined = joined[:-1].rstrip()
                    continue
                text, joined, where, start = joined, "", f"{doc.name}:{start}", 0
                if re.search(r"#\s*(error|run by tests/)", text):
                    continue
                cmd = _parse(text, where)
                if cmd:
                    cmd.files = dict(files)
            else:
                for span in re.findall(r"`([^`]+)`", line):
                    if INLINE.match(span):
                        cmd = _parse(span, f"{doc.name}:{n}")
                        if cmd:
                            found.append(cmd)
                continue
            if cmd:
                found.append(cmd)
    return found


COMMANDS = collect()


def _strip_hydra_flags(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif a not in HYDRA_FLAGS:
            out.append(a)
    return out


def _expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """Each job of a `-m` grid as a plain override list (a single run: itself)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
               if o.is_sweep_override() else [o.input_line] for o in parsed]
    return [list(job) for job in itertools.product(*choices)]


def test_the_docs_hold_the_commands_this_test_is_about():
    programs = {c.program for c in COMMANDS}
    assert len(COMMANDS) >= 20
    assert {"train.py", "scripts/evaluate.py", "scripts/compare_runs.py"} <= programs
    assert any(c.text.startswith("make train") for c in COMMANDS)
    assert any("-m" in shlex.split(_substitute(c.text), comments=True) for c in COMMANDS)


def test_placeholder_rules():
    cmd = _parse("python scripts/evaluate.py run_dir=outputs/runs/<date>/<time> [episodes=2000] "
                 "[checkpoint=best|last] [device=cpu]", "x")
    assert cmd.args == ["run_dir=outputs/runs/x/x", "episodes=2000", "checkpoint=best", "device=cpu"]
    cmd = _parse("train.py <same overrides> hydra.run.dir=outputs/runs/my-run resume=true  # c", "x")
    assert cmd.args == ["hydra.run.dir=outputs/runs/my-run", "resume=true"]
    assert _parse('make train ARGS="experiment=a b=1"', "x").args == ["experiment=a", "b=1"]
    assert _expand_sweeps(["a=1,2", "b=3"]) == [["a=1", "b=3"], ["a=2", "b=3"]]


HYDRA_COMMANDS = [c for c in COMMANDS if c.program in HYDRA_APPS]


@pytest.mark.parametrize("cmd", HYDRA_COMMANDS, ids=str)
def test_documented_hydra_command_composes(cmd, monkeypatch, tmp_path):
    monkeypatch.setenv("METALEARN_DATA_DIR", "/data")
    monkeypatch.setenv("HOME", str(tmp_path))  # where the block's own files (heredocs) go
    for name, body in (cmd.files or {}).items():
        path = Path(os.path.expandvars(os.path.expanduser(name)))
        assert path.is_relative_to(tmp_path), f"{cmd}: write example files under ~ ({name})"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    args = [os.path.expandvars(a) for a in cmd.args]
    for path in re.findall(r"(?<![\w/])((?:scripts|sweeps|metalearn)/[\w./-]+\.\w+)", cmd.text):
        assert (ROOT / path).exists(), f"{cmd}: {path} does not exist"
    config = HYDRA_APPS[cmd.program]
    with initialize_config_module("metalearn.configs", version_base="1.3"):
        for job in _expand_sweeps(_strip_hydra_flags(args)):
            try:
                cfg = compose(config, overrides=job, return_hydra_config=True)
            except Exception as e:  # noqa: BLE001  (say which documented command broke)
                pytest.fail(f"{cmd}\n  does not compose with {job}: {e}")
            with open_dict(cfg):
                del cfg["hydra"]  # its ${hydra:...} values resolve only inside a running app
            OmegaConf.to_container(cfg, resolve=True)


OTHER_PROGRAMS = sorted({c.program for c in COMMANDS} - set(HYDRA_APPS))


@pytest.mark.parametrize("program", OTHER_PROGRAMS)
def test_documented_script_answers_help(program):
    if program.startswith("scripts/"):
        argv = [sys.executable, str(ROOT / program), "--help"]
    else:
        assert program in SCRIPTS, f"{program} is documented but not a console script in pyproject"
        module, func = SCRIPTS[program].split(":")
        argv = [sys.executable, "-c",
                f"import sys; sys.argv[0] = {program!r}; from {module} import {func}; {func}()",
                "--help"]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, f"{program} --help failed:\n{proc.stderr[-2000:]}"


@pytest.mark.parametrize("group, row", [("algorithm", "`algorithm=`"), ("scheduler", "`scheduler=`"),
                                        ("experiment", "`experiment=`"), ("backbone", "`backbone=`"),
                                        ("dataset", "`dataset=`")])
def test_the_readme_option_table_names_every_shipped_choice(group, row):
    """A new algorithm, schedule or preset YAML shows up in README's table, or this fails."""
    line = next(l for l in (ROOT / "README.md").read_text().splitlines() if l.startswith(f"| {row}"))
    # expand `name_{a,b}_suffix` brace lists before looking names up
    names = set(re.findall(r"`([\w{},]+)`", line))
    listed = {"".join(p) for n in names
              for p in itertools.product(*[part.split(",") if i % 2 else [part]
                                           for i, part in enumerate(re.split(r"[{}]", n))])}
    shipped = {p.stem for p in (ROOT / "metalearn" / "configs" / group).glob("*.yaml")}
    assert shipped <= listed, f"README's {row} row misses {sorted(shipped - listed)}"
