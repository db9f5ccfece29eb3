import os

# Tests never write into a user's ~/.cache unless they asked for it.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
