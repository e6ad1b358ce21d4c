"""One online run: a stream of tasks, each scored before the learner trains on it.

Round t: materialise task t; the learner adapts on its support set and is scored on its query
set (and, for the efficiency measure, with 1..max_shots shots); only then does the task join
the buffer and the learner take its steps. `online.pt` after every `checkpoint_every` rounds
holds the whole state (`OnlineState`: learner, optimizer, buffer, position, RNGs), so a run
killed at any point and resumed ends bit-identical to one that never stopped. The run directory,
the resume policy, the logger and the checkpoint writer are training's (engine/run.py).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from metalearn import checkpoint, io, threads
from metalearn.config_check import validate
from metalearn.data.episodes import Preprocess
from metalearn.engine.distributed import resolve_device
from metalearn.engine.loop import build, seed_everything
from metalearn.engine.progress import line_every
from metalearn.engine.run import Run, command_line, open_run
from metalearn.errors import ConfigError, user_error
from metalearn.online.buffer import TaskBuffer
from metalearn.online.learners import Context, OnlineLearner
from metalearn.online.state import OnlineState
from metalearn.online.stream import TaskStream

log = logging.getLogger(__name__)


def _make(node: DictConfig) -> Any:
    """instantiate(node), raising the MetalearnError Hydra wraps (a bad setting is one line)."""
    try:
        return instantiate(node)
    except Exception as e:
        raise (user_error(e) or e) from None


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


def run_online(cfg: DictConfig, out_dir: Path,
               overrides: list[str] | None = None) -> dict[str, Any]:
    """`overrides`: the command line's (under train.py, read from Hydra), which `resume=<run
    dir>` applies on top of that run's saved config, as for training."""
    if overrides is None:
        overrides = command_line(Path(out_dir))
    validate(cfg)  # every value checked before any work, as for training
    threads.apply(cfg.get("threads", "auto"))
    # one writer per directory; a finished stream is never written over unless asked
    with open_run(cfg, Path(out_dir), OnlineState, overrides) as run:
        on = _setup(run)
        logger = run.start_logger(on.state)
        exit_code = 1
        try:
            log.info("online: %s on %d rounds (%s), %d-way %d-shot, %s; writing to %s",
                     type(on.learner).__name__, len(on.stream),
                     ", ".join(on.stream.domain_names[:4]) +
                     (", ..." if len(on.stream.domain_names) > 4 else ""), on.t.ways,
                     on.t.shots, threads.summary(), run.dir)
            for r in range(on.state.round, len(on.stream)):
                _round(on, run, r)
            results = _summary(on, run)
            exit_code = 0
            return results
        finally:
            logger.finish(exit_code)


@dataclass
class _Online:
    """What the rounds of one stream share."""

    cfg: DictConfig
    state: OnlineState
    stream: TaskStream
    split: Any  # the data split the stream draws from
    prep: Preprocess
    probes: TaskStream | None  # fresh tasks of the first domains, for the forgetting measure
    device: torch.device
    first: int  # the round this process started at
    started: float
    every: int  # a train.log line every so many rounds

    @property
    def learner(self) -> OnlineLearner:
        return self.state.learner

    @property
    def t(self) -> DictConfig:
        return self.cfg.task

    @property
    def eff(self) -> DictConfig:
        return self.cfg.online.efficiency

    def episodes(self, stream: TaskStream, index: list[int]):
        return self.prep(stream.episodes(self.split, index, self.t.shots, self.t.query))

    def probe_acc(self, domain: int) -> float:
        idx = (self.probes.domain == domain).nonzero().flatten().tolist()
        return float(self.learner.score(self.episodes(self.probes, idx)).acc.mean())


def _setup(run: Run) -> _Online:
    """Build the learner, buffer and stream; check the settings; restore a resumed state."""
    cfg = run.cfg
    oc, t = cfg.online, cfg.task
    device = resolve_device(cfg.device)
    buffer: TaskBuffer = _make(oc.buffer)
    spec = _make(oc.stream)
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
    run.write_text("stream.json", json.dumps(
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
            and not oc.checkpoint and run.saved is None:
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
    state = OnlineState(learner, buffer, {"buffer": buffer_gen, **learner.generators()},
                        stream.fingerprint(), config=OmegaConf.to_container(cfg))
    if run.saved is not None:
        state.load_state_dict(run.saved)
        log.info("resuming the stream at round %d of %d", state.round + 1, len(stream))
    # a line every few rounds and at each domain's end (bounded like training's), for train.log
    return _Online(cfg, state, stream, split, prep, probes, device, first=state.round,
                   started=time.time(), every=line_every(len(stream), 1))


def _round(on: _Online, run: Run, r: int) -> None:
    """Round r: score task r with what was learnt before it, then learn from it; log, save."""
    state, stream, learner, eff, t = on.state, on.stream, on.learner, on.eff, on.t
    hist = state.history
    scored = learner.score(on.episodes(stream, [r]))
    acc, loss = float(scored.acc[0]), float(scored.loss[0])
    measured = bool(eff.max_shots) and (r + 1) % eff.every == 0
    examples = examples_to_reach(learner, stream, on.split, on.prep, r, t, eff, acc) \
        if measured else None
    state.buffer.add(r)
    extra = learner.learn(state.buffer, state.generators["buffer"])
    hist["acc"].append(acc)
    hist["examples"].append(examples)
    d = int(stream.domain[r])
    row = {"online/acc": acc, "online/loss": loss,
           "online/acc_mean": sum(hist["acc"]) / len(hist["acc"]), "online/domain": d, **extra}
    if measured:
        row["online/examples_to_threshold"] = examples
    ends_domain = r + 1 == len(stream) or int(stream.domain[r + 1]) != d
    if on.probes is not None and ends_domain and d < len(on.probes.domain_names):
        hist["probe_after"][str(d)] = on.probe_acc(d)
        row[f"forgetting/acc_after_domain_{d}"] = hist["probe_after"][str(d)]
    run.logger.log(r + 1, row)
    if (r + 1) % on.every == 0 or ends_domain:
        _report(on, r, d, ends_domain, row)
    state.round = r + 1
    if (r + 1) % on.cfg.online.checkpoint_every == 0 or r + 1 == len(stream):
        run.save(state)


def _report(on: _Online, r: int, d: int, ends_domain: bool, row: dict[str, Any]) -> None:
    n, hist = len(on.stream), on.state.history
    pace = (r + 1 - on.first) / max(time.time() - on.started, 1e-9)
    log.info("round %d/%d acc %.3f mean %.3f | %.1f rounds/min, %s left", r + 1, n,
             row["online/acc"], row["online/acc_mean"], 60 * pace,
             time.strftime("%H:%M:%S", time.gmtime((n - r - 1) / pace)))
    if ends_domain:
        in_d = [a for a, dd in zip(hist["acc"], on.stream.domain.tolist()) if dd == d]
        probe = row.get(f"forgetting/acc_after_domain_{d}")
        log.info("domain %s done: acc %.3f over its %d rounds%s", on.stream.domain_names[d],
                 sum(in_d) / len(in_d), len(in_d),
                 "" if probe is None else f"; fresh tasks of it {probe:.3f}")


def _summary(on: _Online, run: Run) -> dict[str, Any]:
    """results.json, the summary row and the learning curve."""
    state, stream = on.state, on.stream
    results = summarise(state.history, stream, on.eff, on.probes, on.probe_acc, on.learner)
    results["wall_time_s"] = state.elapsed()
    results["device"] = str(on.device)
    run.logger.log(len(stream), {k: v for k, v in results.items()
                                 if k.startswith("forgetting/")})
    run.logger.summary(results)
    run.write_text("results.json", json.dumps(results, indent=2))
    io.note_written(run.dir / "online_curve.png")
    from metalearn.online.plot import curve  # matplotlib only once there is a curve to draw
    curve(run.dir / "online_curve.png", state.history["acc"], stream,
          title=f"{type(on.learner).__name__}: {on.t.ways}-way {on.t.shots}-shot")
    log.info("online accuracy %.2f%% over %d rounds; results in %s",
             100 * results["online_acc"], len(stream), run.dir)
    return results


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
