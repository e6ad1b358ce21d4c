"""One online run: a stream of tasks, each scored before the learner trains on it.

Round t: materialise task t; the learner adapts on its support set and is scored on its query
set (and, for the efficiency measure, with 1..max_shots shots); only then does the task join
the buffer and the learner take its steps. `online.pt` after every `checkpoint_every` rounds
holds the whole state (learner, optimizer, buffer, position, RNGs), so a run killed at any
point and resumed ends bit-identical to one that never stopped.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from metalearn import safety
from metalearn.config_check import validate
from metalearn.data.episodes import Preprocess
from metalearn import checkpoint, io
from metalearn.engine import rundir
from metalearn.engine.checkpoint import restore_rng, rng_state
from metalearn.engine.distributed import resolve_device
from metalearn.engine.loop import build, seed_everything
from metalearn.engine.progress import line_every
from metalearn import threads
from metalearn.errors import ConfigError, MetalearnError
from metalearn.online.learners import Context, OnlineLearner
from metalearn.online.stream import TaskStream
from metalearn.tracking import RunLogger

log = logging.getLogger(__name__)
STATE, PREV = rundir.ONLINE_STATE
# A resumed run may change where and how it runs, not what it learns.
FREE_KEYS = ("resume", "device", "paths.", "logger.")


def make_logger(cfg: DictConfig, out_dir: Path, metrics_offset: int) -> RunLogger:
    """The one place that builds the tracker."""
    return RunLogger(cfg, out_dir, metrics_offset=metrics_offset)


def _find_state(out_dir: Path) -> tuple[dict[str, Any], Path] | None:
    found = [p for p in (out_dir / STATE, out_dir / PREV) if p.exists()]
    for path in found:
        try:
            return checkpoint.load(path), path
        except checkpoint.ForeignCheckpoint:
            raise  # a file that is not ours (or imports code): never skipped silently
        except Exception as e:  # a damaged newest file: fall back to the previous one
            log.warning("%s; trying the previous online checkpoint", e)
    if found:
        raise ConfigError(f"no readable online checkpoint in {out_dir}: start a new run")
    return None


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): d}


def _resume(cfg: DictConfig, out_dir: Path) -> tuple[DictConfig, dict | None]:
    mode = cfg.get("resume") or False
    found = _find_state(out_dir) if mode else None
    if found is None:
        if mode not in (False, "auto"):
            raise ConfigError(f"resume={mode} but {out_dir} holds no {STATE}: pass the online "
                              f"run's directory (resume=<dir>), or drop resume")
        return cfg, None
    state, path = found
    if isinstance(mode, str) and mode != "auto":
        # the stream is then built from the checkpoint's config: shipped targets only
        saved = safety.checked(state.get("config"), path)
        with open_dict(saved):
            saved.resume, saved.device = cfg.resume, cfg.device
        return saved, state
    a, b = _flat(state["config"]), _flat(OmegaConf.to_container(cfg, resolve=True))
    diff = [k for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and not k.startswith(FREE_KEYS)]
    if diff:
        raise ConfigError(f"resume: the config differs from the online checkpoint's at "
                          f"{', '.join(diff)}: resume with the original overrides, or "
                          f"resume=<run dir> to reuse its config")
    return cfg, state


def _make(node: DictConfig) -> Any:
    """instantiate(node), raising the MetalearnError Hydra wraps (a bad setting is one line)."""
    try:
        return instantiate(node)
    except Exception as e:
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, MetalearnError):
            cause = cause.__cause__
        raise (cause or e) from None


def _init_from(algo: torch.nn.Module, where: str) -> None:
    """Meta-parameters from an i.i.d. meta-training run (its best.pt) or a .pt file."""
    path = Path(where)
    path = path / "best.pt" if path.is_dir() else path
    state = checkpoint.load(path)
    try:
        algo.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        raise ConfigError(f"online.checkpoint={where}: its weights do not fit this algorithm/"
                          f"backbone/task.ways ({str(e).splitlines()[0]}); use the overrides of "
                          f"the run that wrote it") from None


def run_online(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    validate(cfg)  # every value checked before any work, as for training
    threads.apply(cfg.get("threads", "auto"))
    mode = cfg.get("resume") or False
    out_dir = rundir.resolve(mode, out_dir)
    # one writer per directory; a finished stream is never written over unless asked
    with rundir.claim(out_dir):
        rundir.prepare(out_dir, resume=bool(mode), overwrite=bool(cfg.get("overwrite")))
        rundir.save_hydra_files(out_dir, cfg, resume=bool(mode))
        return _run(*_resume(cfg, out_dir), out_dir)


def _run(cfg: DictConfig, state: dict | None, out_dir: Path) -> dict[str, Any]:
    oc, t = cfg.online, cfg.task
    out_dir.mkdir(parents=True, exist_ok=True)
    io.note_written(out_dir / "config.yaml")
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    device = resolve_device(cfg.device)
    buffer, spec = _make(oc.buffer), _make(oc.stream)
    learner: OnlineLearner = _make(oc.learner)
    seed_everything(cfg.seed)
    data, algo = build(cfg, device)
    eff = oc.efficiency
    if eff.max_shots and eff.max_shots < t.shots:
        raise ConfigError(f"online.efficiency.max_shots={eff.max_shots} < task.shots={t.shots}: "
                          f"raise it (or 0 to turn the efficiency measure off)")
    if oc.checkpoint_every < 1:
        raise ConfigError(f"online.checkpoint_every={oc.checkpoint_every}: must be >= 1")
    split = data.splits()[spec.split]
    shots_drawn = max(t.shots, eff.max_shots or 0)
    stream: TaskStream = spec.draw(split, t.ways, shots_drawn, t.query, cfg.seed)
    io.note_written(out_dir / "stream.json")
    (out_dir / "stream.json").write_text(json.dumps(
        {**stream.to_json(split), "left_out": getattr(spec, "left_out", [])}))
    probes = None
    if oc.forgetting.domains and hasattr(spec, "probes"):
        probes = spec.probes(stream, split, oc.forgetting.domains, oc.forgetting.tasks, t.ways,
                             cfg.seed + 1)
    prep = Preprocess(data.mean, data.std, device)
    channels, size, _ = data.image_shape

    def make_backbone() -> torch.nn.Module:
        return instantiate(cfg.backbone, in_channels=channels, image_size=size).to(device)

    def labelled(index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ep = stream.episodes(split, index, t.shots, t.query)
        x = prep.images(torch.cat([ep.support_x, ep.query_x], 1), train=True).flatten(0, 1)
        cls = stream.classes[torch.as_tensor(index)]
        y = torch.cat([cls.gather(1, ep.support_y), cls.gather(1, ep.query_y)], 1).flatten()
        return x, y.to(device)

    if oc.checkpoint and not learner.uses_meta_learner:
        raise ConfigError(f"online.checkpoint is set but {type(learner).__name__} does not use "
                          f"the meta-learner's parameters: drop it, or use online=ftml/frozen")
    if getattr(learner, "steps_per_round", 1) == 0 and learner.uses_meta_learner \
            and not oc.checkpoint and state is None:
        raise ConfigError("online=frozen scores fixed meta-parameters: set online.checkpoint="
                          "<run dir of an i.i.d. meta-training run>")
    if oc.checkpoint:
        _init_from(algo, oc.checkpoint)
    learner.setup(Context(
        algo=algo, make_backbone=make_backbone,
        make_optimizer=lambda params: instantiate(cfg.optimizer, params=params),
        episodes=lambda index: prep(stream.episodes(split, index, t.shots, t.query), train=True),
        labelled=labelled, num_classes=split.num_classes, ways=t.ways,
        total_rounds=len(stream)))
    buffer_gen = torch.Generator().manual_seed(cfg.seed)
    gens = {"buffer": buffer_gen, **learner.generators()}
    hist: dict[str, Any] = {"acc": [], "examples": [], "probe_after": {}, "elapsed_s": 0.0}
    first = 0
    if state is not None:
        if state["stream"] != stream.fingerprint():
            raise ConfigError(f"resume: the stream drawn now differs from the checkpoint's (the "
                              f"data under paths.data_dir changed?): start a new run")
        learner.load_state_dict(state["learner"])
        buffer.load_state_dict(state["buffer"])
        restore_rng(state["rng"], gens)
        hist, first = state["history"], state["round"]
        log.info("resuming the stream at round %d of %d", first + 1, len(stream))
    logger = make_logger(cfg, out_dir, state["metrics_bytes"] if state else 0)
    start = time.time()

    def save(done: int) -> None:
        hist["elapsed_s"] += time.time() - save.since
        save.since = time.time()
        checkpoint.save_rotating(
            {"format": checkpoint.FORMAT, "version": checkpoint.VERSION,
             "round": done, "learner": learner.state_dict(), "buffer": buffer.state_dict(),
             "rng": rng_state(gens), "history": hist, "stream": stream.fingerprint(),
             "metrics_bytes": logger.metrics_offset, "wandb_run_id": logger.run_id,
             "config": OmegaConf.to_container(cfg, resolve=True)}, out_dir / STATE)
    save.since = start

    def probe_acc(domain: int) -> float:
        idx = (probes.domain == domain).nonzero().flatten().tolist()
        episodes = prep(probes.episodes(split, idx, t.shots, t.query))
        return float(learner.score(episodes).acc.mean())

    # a line every few rounds and at each domain's end (bounded like training's), for train.log
    every, n = line_every(len(stream), 1), len(stream)
    log.info("online: %s on %d rounds (%s), %d-way %d-shot, %s; writing to %s",
             type(learner).__name__, n, ", ".join(stream.domain_names[:4]) +
             (", ..." if len(stream.domain_names) > 4 else ""), t.ways, t.shots,
             threads.summary(), out_dir)

    def report(r: int, d: int, ends_domain: bool, row: dict[str, Any]) -> None:
        pace = (r + 1 - first) / max(time.time() - start, 1e-9)
        log.info("round %d/%d acc %.3f mean %.3f | %.1f rounds/min, %s left", r + 1, n,
                 row["online/acc"], row["online/acc_mean"], 60 * pace,
                 time.strftime("%H:%M:%S", time.gmtime((n - r - 1) / pace)))
        if ends_domain:
            in_d = [a for a, dd in zip(hist["acc"], stream.domain.tolist()) if dd == d]
            probe = row.get(f"forgetting/acc_after_domain_{d}")
            log.info("domain %s done: acc %.3f over its %d rounds%s", stream.domain_names[d],
                     sum(in_d) / len(in_d), len(in_d),
                     "" if probe is None else f"; fresh tasks of it {probe:.3f}")

    exit_code = 1
    try:
        for r in range(first, len(stream)):
            # 1. score the new task with what was learnt before it ...
            ep = prep(stream.episodes(split, [r], t.shots, t.query))
            scored = learner.score(ep)
            acc, loss = float(scored.acc[0]), float(scored.loss[0])
            examples = None
            if eff.max_shots and (r + 1) % eff.every == 0:
                examples = examples_to_reach(learner, stream, split, prep, r, t, eff, acc)
            # 2. ... then learn from it
            buffer.add(r)
            extra = learner.learn(buffer, buffer_gen)
            hist["acc"].append(acc)
            hist["examples"].append(examples)
            d = int(stream.domain[r])
            row = {"online/acc": acc, "online/loss": loss, "online/acc_mean": sum(hist["acc"]) / len(hist["acc"]),
                   "online/domain": d, **extra}
            if eff.max_shots and (r + 1) % eff.every == 0:
                row["online/examples_to_threshold"] = examples
            ends_domain = r + 1 == len(stream) or int(stream.domain[r + 1]) != d
            if probes is not None and ends_domain and d < len(probes.domain_names):
                hist["probe_after"][str(d)] = probe_acc(d)
                row[f"forgetting/acc_after_domain_{d}"] = hist["probe_after"][str(d)]
            logger.log(r + 1, row)
            if (r + 1) % every == 0 or ends_domain:
                report(r, d, ends_domain, row)
            if (r + 1) % oc.checkpoint_every == 0 or r + 1 == len(stream):
                save(r + 1)
        results = summarise(hist, stream, eff, probes, probe_acc, learner)
        results["wall_time_s"] = hist["elapsed_s"] + time.time() - save.since
        results["device"] = str(device)
        logger.log(len(stream), {k: v for k, v in results.items()
                                 if k.startswith("forgetting/")})
        logger.summary(results)
        io.note_written(out_dir / "results.json")
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
        io.note_written(out_dir / "online_curve.png")
        from metalearn.online.plot import curve  # matplotlib only once there is a curve to draw
        curve(out_dir / "online_curve.png", hist["acc"], stream,
              title=f"{type(learner).__name__}: {cfg.task.ways}-way {cfg.task.shots}-shot")
        log.info("online accuracy %.2f%% over %d rounds; results in %s",
                 100 * results["online_acc"], len(stream), out_dir)
        exit_code = 0
        return results
    finally:
        logger.finish(exit_code)


def examples_to_reach(learner: OnlineLearner, stream: TaskStream, split, prep: Preprocess,
                      r: int, t: DictConfig, eff: DictConfig, acc_at_shots: float) -> int | None:
    """FTML's efficiency measure: support examples (ways x shots) the learner needs, adapting
    from its current parameters, to reach `eff.threshold` query accuracy on task r; None if
    `eff.max_shots` shots are not enough."""
    for s in range(1, eff.max_shots + 1):
        a = acc_at_shots if s == t.shots else \
            float(learner.score(prep(stream.episodes(split, [r], s, t.query))).acc[0])
        if a >= eff.threshold:
            return s * t.ways
    return None


def summarise(hist: dict, stream: TaskStream, eff: DictConfig, probes, probe_acc,
              learner: OnlineLearner) -> dict[str, Any]:
    accs = torch.tensor(hist["acc"], dtype=torch.float64)
    n = len(accs)
    tail = accs[-max(1, n // 10):]
    out: dict[str, Any] = {
        "learner": type(learner).__name__, "rounds": n, "online_acc": float(accs.mean()),
        "online_acc_ci95": float(1.96 * accs.std() / n ** 0.5) if n > 1 else None,
        "online_acc_last10pct": float(tail.mean()),
        "per_domain_acc": {name: float(accs[stream.domain[:n] == i].mean())
                           for i, name in enumerate(stream.domain_names)
                           if bool((stream.domain[:n] == i).any())},
    }
    if eff.max_shots:
        measured = [e for i, e in enumerate(hist["examples"]) if (i + 1) % eff.every == 0]
        hit = [e for e in measured if e is not None]
        out["efficiency_threshold"] = eff.threshold
        out["examples_to_threshold_mean"] = sum(hit) / len(hit) if hit else None
        out["threshold_reached_frac"] = len(hit) / len(measured) if measured else None
    if probes is not None:
        after = {int(k): v for k, v in hist["probe_after"].items()}
        final = {d: probe_acc(d) for d in after}
        out["forgetting/acc_after_domain"] = {probes.domain_names[d]: v for d, v in after.items()}
        out["forgetting/acc_at_end"] = {probes.domain_names[d]: v for d, v in final.items()}
        out["forgetting/mean"] = (sum(after[d] - final[d] for d in after) / len(after)
                                  if after else None)
    return out
