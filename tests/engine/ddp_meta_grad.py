"""Run under torchrun: each rank back-propagates its share of one fixed float64 meta-batch,
the loop's helper sums the gradients, rank 0 saves them to argv[1]."""
import sys

import torch

import metalearn  # noqa: F401
from metalearn.engine import distributed
from tests.engine.test_distributed import meta_batch_and_learner

world, _ = distributed.setup("cpu")
algo, batch = meta_batch_and_learner()
lo, hi = world.shard(len(batch))
for chunk in batch[lo:hi].chunks(1):  # chunks too, as with trainer.chunk_size
    (algo(chunk).loss.sum() / len(batch)).backward()
world.sum_grads(algo.parameters())
if world.is_main:
    torch.save({"grads": [p.grad for p in algo.parameters()], "shard": (lo, hi),
                "world": world.size}, sys.argv[1])
distributed.teardown(world)
