"""Online meta-learning (Finn et al. 2019): tasks arrive one at a time; each is scored before
the learner trains on it. `run.run_online` is the loop; `train.py online=<learner>` runs it."""
