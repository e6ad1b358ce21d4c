"""Online meta-learning (Finn et al. 2019): tasks arrive one at a time; each is scored before
the learner trains on it. `run.run_online` is the loop; `train.py online=<learner>` runs it."""

# An online run's checkpoint and the one before it (online/state.py: OnlineState), here without
# torch so train.py can check `resume=<dir>` before anything is imported.
STATE_FILES = ("online.pt", "online.prev.pt")
