"""metalearn: Hydra-configured few-shot meta-learning."""
import sys

# learn2learn imports gym, whose `gym_notices` prints an "unmaintained" banner on import.
sys.modules.setdefault("gym_notices", None)
