"""Every config value checked before any work: `validate(cfg)` raises one ConfigError that
names each bad key, its value and what is expected.

`trainer.*`, `task.*`, `seed`, `device`, `threads` and `resume` follow the table below. Every other
group that builds an object (`_target_`: algo, backbone, dataset, optimizer, ...) is checked
against the target's own signature: unknown keys (with the closest valid one), types from the
parameter annotations (pydantic, strict: a YAML string is never read as a number), and
positive values for parameters named like a size or a rate (`NAME_POSITIVE`). A new algorithm
is covered by its annotations alone; `Annotated[float, annotated_types.Ge(0)]` states more.
"""
from __future__ import annotations

import difflib
import inspect
import re
import typing
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from annotated_types import Ge, Gt
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from pydantic import ConfigDict, TypeAdapter, ValidationError

from metalearn.errors import ConfigError

PosInt = Annotated[int, Ge(1)]
POS_INT = (PosInt, "an integer >= 1")
# key -> (annotation, what to tell the user)
SCHEMA: dict[str, dict[str, tuple[Any, str]]] = {
    "trainer": {
        "iterations": POS_INT, "meta_batch_size": POS_INT,
        "chunk_size": (Optional[PosInt], "null or an integer >= 1"),
        "eval_every": POS_INT, "val_episodes": POS_INT, "test_episodes": POS_INT,
        "eval_batch_size": POS_INT, "eval_seed": (int, "an integer"), "log_every": POS_INT,
        "checkpoint_every": POS_INT, "max_bad_steps": POS_INT,
        "data_on_device": (bool, "true or false"), "channels_last": (bool, "true or false"),
        "amp": (Literal["none", "bf16"], "one of none, bf16"),
        "augment": (Optional[Literal["flip"]], "null or flip"),
        "collective_timeout_s": (Annotated[float, Gt(0)], "a number of seconds > 0"),
    },
    "task": {"ways": POS_INT, "shots": POS_INT, "query": POS_INT,
             "train_ways": (Optional[PosInt], "null or an integer >= 1"),
             "train_shots": (Optional[PosInt], "null or an integer >= 1")},
    "": {"seed": (int, "an integer"), "resume": (bool | str, "false, true, auto or a run directory"),
         "device": (Annotated[str, "device"], "auto, cpu, cuda or cuda:<index>"),
         "threads": (Literal["auto"] | PosInt, "auto or an integer >= 1")},
}
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
# Owned elsewhere (the scheduler group replaces them): present but not checked here.
UNCHECKED = re.compile(r"trainer\.lr_(schedule|min|step_size|gamma)$")
NAME_POSITIVE = re.compile(r"(^|_)(lr|steps|ways|shots|size|channels|layers)$")
NAME_NON_NEGATIVE = re.compile(r"(decay|momentum)$")
_STRICT = ConfigDict(strict=True, arbitrary_types_allowed=True)


def validate(cfg: DictConfig, targets: bool = True) -> None:
    """Raise one ConfigError listing every bad value in `cfg`; return None if all are fine.

    `targets=False` checks only the table, which needs no import of a target's module (torch):
    train.py does that first so that a typo is answered at once."""
    errors: list[str] = []
    for section, schema in SCHEMA.items():
        node = cfg.get(section) if section else cfg
        if not isinstance(node, DictConfig):
            continue
        prefix = f"{section}." if section else ""
        values = OmegaConf.to_container(node, resolve=True) if section else {
            k: OmegaConf.select(cfg, k) for k in schema if k in cfg}
        for key, value in values.items():
            if section and key not in schema:
                known = set(schema) | _shipped_keys(section)
                if key not in known and not UNCHECKED.match(prefix + key):
                    errors.append(_unknown(prefix, key, value, known))
                continue
            if key in schema:
                ann, expected = schema[key]
                if not _fits(value, ann):
                    errors.append(f"{prefix}{key}={_show(value)}: expected {expected}")
    if targets:
        errors += [e for key, node in cfg.items() if key != "hydra"
                   for e in _targets(str(key), node)]
    if errors:
        raise ConfigError("; ".join(errors))


def _fits(value: Any, ann: Any) -> bool:
    if typing.get_args(ann)[1:] == ("device",):
        return isinstance(value, str) and DEVICE.fullmatch(value) is not None
    return _type_error(value, ann) is None


def _type_error(value: Any, ann: Any) -> str | None:
    """pydantic's complaint about `value` as `ann` (strict), or None if it fits / can't tell."""
    try:
        adapter = _adapter(ann)
    except Exception:  # an annotation pydantic cannot build a validator for: don't guess
        return None
    try:
        adapter.validate_python(_tuples(value))
    except ValidationError as e:
        return e.errors()[0]["msg"]
    return None


@lru_cache(maxsize=None)
def _adapter(ann: Any) -> TypeAdapter:
    return TypeAdapter(ann, config=_STRICT)


def _tuples(value: Any) -> Any:
    """YAML has lists only; a `tuple[...]` parameter gets them as lists."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _targets(path: str, node: Any) -> list[str]:
    """Errors of every `_target_` node at or under `path` (online.learner, online.stream, ...)."""
    if not isinstance(node, DictConfig):
        return []
    errors = _check_target(path, node) if "_target_" in node else []
    return errors + [e for key, child in node.items_ex(resolve=False)
                     for e in _targets(f"{path}.{key}", child)]


def _check_target(group: str, node: DictConfig) -> list[str]:
    try:
        target = get_object(node._target_)
    except Exception:
        return []  # instantiate reports an unimportable target with its own message
    params, hints = _signature(target)
    if params is None:
        return []
    name = getattr(target, "__name__", str(node._target_))
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    values = OmegaConf.to_container(node, resolve=True)
    errors = []
    for key, value in values.items():
        if key.startswith("_"):  # _target_, _partial_, _recursive_, _convert_, _args_
            continue
        full = f"{group}.{key}"
        if key not in params:
            if not takes_any:
                errors.append(_unknown(f"{group}.", key, value, set(params), f"{name} takes"))
            continue
        if isinstance(value, dict) and "_target_" in value:
            continue
        ann = hints.get(key)
        if ann is not None:
            complaint = _type_error(value, ann)
            if complaint is not None:
                errors.append(f"{full}={_show(value)}: expected {_describe(ann)}")
                continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if NAME_POSITIVE.search(key) and not value > 0:
                errors.append(f"{full}={_show(value)}: expected a number > 0")
            elif NAME_NON_NEGATIVE.search(key) and not value >= 0:
                errors.append(f"{full}={_show(value)}: expected a number >= 0")
    return errors


def _signature(target: Any) -> tuple[dict[str, inspect.Parameter] | None, dict[str, Any]]:
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None, {}
    try:  # modules with `from __future__ import annotations` hold strings: resolve them
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target,
                                      include_extras=True)
    except Exception:
        hints = {}
    return dict(sig.parameters), hints


def _describe(ann: Any) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Annotated:
        return _describe(args[0])
    if origin is Literal:
        return "one of " + ", ".join(_show(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [_describe(a) for a in args if a is not type(None)]
        return (" or ".join(["null", *parts]) if type(None) in args else " or ".join(parts))
    if origin in (tuple, list) or ann in (tuple, list):
        return "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        ann, getattr(ann, "__name__", str(ann)))


def _unknown(prefix: str, key: str, value: Any, valid: set[str], takes: str = "valid keys:") -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    hint = f"did you mean {prefix}{close[0]}?" if close else \
        f"{takes} {', '.join(sorted(valid))}"
    return f"{prefix}{key}={_show(value)}: unknown key; {hint}"


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@lru_cache(maxsize=None)
def _shipped_keys(section: str) -> frozenset[str]:
    """Keys train.yaml defines in `section`: what a preset or another module may rely on."""
    shipped = OmegaConf.load(Path(__file__).parent / "configs" / "train.yaml")
    return frozenset(shipped.get(section) or {})
