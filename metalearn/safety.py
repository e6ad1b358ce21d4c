"""What a run directory or checkpoint may build: the classes metalearn ships, and those you allow.

A run's `config.yaml` and the config stored in a checkpoint are data that someone else may
have written, and `hydra.utils.instantiate` imports and calls whatever `_target_` they name
(`pathlib.Path.write_text`, `shutil.copyfile`, `runpy._run_module_code`, ...). So every config
read from a file goes through `load_config`/`checked` before anything is built from it: each
node (dicts and lists, after interpolations are resolved) may only name a `_target_` that a
YAML file under `metalearn/configs/` names (read from the files, so a new config group option
is allowed without touching this list), or one registered with `allow("mypkg.MyBackbone")` or
`METALEARN_ALLOW_TARGETS=mypkg.MyBackbone,mypkg.nets.*`. A config composed on your own command
line is trusted (it is your code) and never checked here. docs/security.md.
"""
from __future__ import annotations

import fnmatch
import importlib.resources
import os
from functools import lru_cache
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from metalearn.errors import ConfigError

ENV = "METALEARN_ALLOW_TARGETS"
# Hydra's instantiate calls the target with these as positional arguments; no shipped config
# uses them, and a run's config never needs them.
REFUSED_KEYS = ("_args_",)
_allowed: set[str] = set()


def allow(*targets: str) -> None:
    """Let run directories and checkpoints build `targets` too (your own classes), e.g.
    `allow("mypkg.MyBackbone")`; a pattern such as `"mypkg.nets.*"` allows a whole module."""
    for target in targets:
        if not isinstance(target, str) or not target.strip():
            raise TypeError(f"allow() takes dotted names such as 'mypkg.MyBackbone', not {target!r}")
        _allowed.add(target.strip())


def allowed(target: str) -> bool:
    from_env = [t.strip() for t in os.environ.get(ENV, "").split(",") if t.strip()]
    return target in shipped() or any(fnmatch.fnmatchcase(target, p)
                                      for p in (*_allowed, *from_env))


@lru_cache(maxsize=None)
def shipped() -> frozenset[str]:
    """Every `_target_` a YAML file under metalearn/configs/ names."""
    found: set[str] = set()
    for f in _yaml_files(importlib.resources.files("metalearn.configs")):
        _collect(yaml.safe_load(f.read_text()), found)
    return frozenset(found)


def _yaml_files(folder: Traversable) -> list[Traversable]:
    out = []
    for entry in folder.iterdir():
        if entry.is_dir():
            out += _yaml_files(entry)
        elif entry.name.endswith(".yaml"):
            out.append(entry)
    return out


def _collect(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            found.add(node["_target_"])
        for v in node.values():
            _collect(v, found)
    elif isinstance(node, list):
        for v in node:
            _collect(v, found)


def load_config(path: Path) -> DictConfig:
    """A run's config.yaml, checked: a YAML error, a `!!python/...` tag (the YAML loader refuses
    it, running nothing) or a target metalearn does not ship is one ConfigError."""
    try:
        cfg = OmegaConf.load(path)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    except Exception as e:  # yaml.YAMLError (python tags included), UnicodeDecodeError, ...
        raise ConfigError(f"{path}: not a readable config ({_first_line(e)}); it must be the "
                          f"config.yaml a training run wrote") from None
    return checked(cfg, path)


def checked(config: Any, source: str | Path) -> DictConfig:
    """`config` (a mapping read from `source`, a file someone else may have written) as a
    DictConfig, once every `_target_` in it is one metalearn ships or you allowed; otherwise
    one ConfigError naming each offending key and target. Interpolations stay unresolved in
    what is returned (a resumed run relies on them); they are resolved for the check, so a
    value that only becomes a `_target_` node when resolved (`${oc.decode:...}`) is caught."""
    if not isinstance(config, (dict, DictConfig)):
        # a YAML string here would be parsed into nodes by OmegaConf.create, unchecked
        raise ConfigError(f"{source}: its config is a {type(config).__name__}, not a mapping; "
                          f"it was not written by metalearn")
    try:
        cfg = OmegaConf.create(config) if isinstance(config, dict) else config
        tree = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        raise ConfigError(f"{source}: its config cannot be read ({_first_line(e)}); it was not "
                          f"written by metalearn") from None
    problems = list(_refused(tree, ""))
    if problems:
        targets = [(k, t) for k, t in problems if k.endswith("_target_")]
        parts = []
        if targets:
            named = ", ".join(f"{_show(k)}={_show(t)}" for k, t in targets)
            names = ",".join(dict.fromkeys(_show(t) for _, t in targets))
            parts.append(f"{named} {'is not a class' if len(targets) == 1 else 'are not classes'} "
                         f"metalearn ships, and a run directory or checkpoint builds nothing "
                         f"else; if you trust whoever wrote it, allow it with {ENV}={names} "
                         f"(or metalearn.safety.allow() in Python; docs/security.md)")
        parts += [f"{_show(k)} is refused: a run directory or checkpoint may not pass "
                  f"positional arguments" for k, t in problems if not k.endswith("_target_")]
        raise ConfigError(f"{_show(source)}: " + "; ".join(parts))
    return cfg


def _refused(node: Any, key: str):
    """(key, target) of each refused node under `node`."""
    if isinstance(node, dict):
        for k, v in node.items():
            here = f"{key}.{k}" if key else str(k)
            if k == "_target_" and not (isinstance(v, str) and allowed(v)):
                yield here, v
            elif k in REFUSED_KEYS:
                yield here, None
            yield from _refused(v, here)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _refused(v, f"{key}[{i}]")


def _show(value: Any) -> str:
    """`value` as it reads, unless a newline or other odd character could fake a line."""
    text = str(value)
    return text if text.isprintable() and text.strip() == text else repr(value)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
