"""Re-evaluate a finished run as papers do: mean accuracy ± 95% CI over many test episodes.

    python scripts/evaluate.py run_dir=outputs/runs/2026-01-01/12-00-00 \
        [episodes=600] [checkpoint=best|last] [split=test|val] \
        [task.ways=5] [task.shots=1] [task.query=15] [device=auto] \
        [dataset=<config name> [dataset.<key>=<value> ...]]

Loads the run's `config.yaml` and checkpoint, rebuilds data and learner with the training
loop's own `build()`/`samplers()` and scores `episodes` tasks drawn from `trainer.eval_seed`,
so with the run's settings it reproduces its `results.json`. Writes
`eval-<split>-<ways>w<shots>s<query>q-<episodes>ep-<checkpoint>.json` in the run directory.
Ways other than the training ways need a learner without a fixed head (protonet);
the MAML family raises a ConfigError. `dataset=cub` scores the run on another dataset's split
instead (cross-domain; mapping in metalearn/engine/evaluation.py), `dataset.path=...` and
friends override that dataset's config; the file name then carries the dataset's name.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import metalearn  # noqa: E402,F401
from metalearn.engine import checkpoint  # noqa: E402
from metalearn.engine.evaluation import cross_domains, evaluate, evaluate_domains  # noqa: E402
from metalearn.engine.loop import build, resolve_device, samplers, seed_everything  # noqa: E402
from metalearn.errors import ConfigError, MetalearnError  # noqa: E402

OPTIONS = {"run_dir", "episodes", "checkpoint", "split", "task.ways", "task.shots",
           "task.query", "device", "dataset"}


def parse(argv: list[str]) -> dict[str, str]:
    args = {}
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq or (key not in OPTIONS and not key.startswith("dataset.")):
            raise ConfigError(f"unknown argument '{a}': use key=value with key in "
                              f"{', '.join(sorted(OPTIONS))}")
        args[key] = value
    if "run_dir" not in args:
        raise ConfigError("run_dir=<the run's output directory> is required")
    return args


def run(argv: list[str]) -> dict:
    args = parse(argv)
    run_dir = Path(args["run_dir"])
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}/config.yaml not found: run_dir must be a training run's "
                          f"output directory")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    which, split = args.get("checkpoint", "best"), args.get("split", "test")
    if which not in ("best", "last") or split not in ("test", "val"):
        raise ConfigError("checkpoint must be best or last, split must be test or val")
    ways = int(args.get("task.ways", cfg.task.ways))
    shots = int(args.get("task.shots", cfg.task.shots))
    query = int(args.get("task.query", cfg.task.query))
    episodes = int(args.get("episodes", cfg.trainer.test_episodes))
    device = resolve_device(args.get("device", cfg.device))

    seed_everything(cfg.seed)
    data, algo = build(cfg, device)  # with the training ways: the checkpoint's shapes
    algo.check_ways(ways)
    algo.load_state_dict(checkpoint.load(run_dir / f"{which}.pt", device)["model"])
    tc, tag = cfg.trainer, split
    if "dataset" in args:  # cross-domain: another dataset, mapped onto the training images
        name = args["dataset"]
        given = {k[len("dataset."):]: v for k, v in args.items() if k.startswith("dataset.")}
        domains = cross_domains(cfg, {name: OmegaConf.from_dotlist([f"{k}={v}" for k, v in given.items()])})
        found = evaluate_domains(algo, cfg, domains, data, device, episodes=episodes, ways=ways,
                                 shots=shots, query=query, split=split)
        res = {k.rsplit("/", 1)[1]: v for k, v in found.items()}
        tag = f"{split}-{name}"
    else:
        sampler = samplers(cfg, data, device, ways=ways, shots=shots, query=query)[split]
        res = evaluate(algo, sampler, episodes, tc.eval_batch_size, tc.eval_seed)
    out = {"acc": res["acc"], "acc_ci95": res["acc_ci95"], "loss": res["loss"],
           "episodes": episodes, "split": split, "checkpoint": which, "ways": ways,
           "shots": shots, "query": query, "eval_seed": tc.eval_seed,
           "algorithm": cfg.algo._target_, "device": str(device),
           "dataset": args.get("dataset", cfg.dataset._target_)}
    path = run_dir / f"eval-{tag}-{ways}w{shots}s{query}q-{episodes}ep-{which}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"{split} accuracy {100 * res['acc']:.2f} ± {100 * res['acc_ci95']:.2f}% "
          f"({episodes} episodes, {ways}-way {shots}-shot, {which} checkpoint); saved {path}")
    return out


def main() -> None:
    try:
        run(sys.argv[1:])
    except MetalearnError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
