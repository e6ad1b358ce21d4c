"""Meta-train a few-shot learner from a clone: `python train.py dataset=omniglot algo.inner_lr=0.4`.

The app is `metalearn.train` (also installed as `metalearn-train`); its configs ship in the package.
"""
from metalearn.train import main

if __name__ == "__main__":
    main()
