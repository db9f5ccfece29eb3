import os

# Tests never write into a user's ~/.cache unless they asked for it.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def hasher():
    """The SDIM hasher of the BSE tests: small dim keeps the naive loop fast; 16 signatures x 8
    buckets as in production."""
    from models.sdim_hash import SdimConfig, SdimHasher

    return SdimHasher(SdimConfig(dim=16, n_hashes=48, tau=3, seed=7))


@pytest.fixture(scope="session")
def item_embeddings():
    """300 random item embeddings (d=16) with 8 hashed OOV rows."""
    from features.bse import ArrayItemEmbeddings

    return ArrayItemEmbeddings.random(n_items=300, dim=16, n_oov=8, seed=3)


# nanobind's leak report: triton (imported by torch) prints "nanobind: leaked N instances!" and a
# line per object at interpreter exit, about a hundred lines after the test summary. It is
# known, harmless and not ours (triton silences it in its own worker processes the same way), and
# it comes after Python has finished: no warnings filter reaches it. So, once the session is
# over and only when triton was loaded, stderr passes through a filter that drops exactly those
# lines and nothing else.
_NANOBIND_LEAK_FILTER = r"""
import re, sys
leak = re.compile(r"^(nanobind: leaked \d+ (instances|types|functions|keep_alive records)!| - leaked (instance|type|function) .*)$")
for line in sys.stdin.buffer:
    if not leak.match(line.decode(errors="replace").rstrip("\r\n")):
        sys.stderr.buffer.write(line)
        sys.stderr.buffer.flush()
"""


def _filter_nanobind_leaks() -> None:
    import subprocess
    import sys

    sys.stderr.flush()
    filt = subprocess.Popen([sys.executable, "-c", _NANOBIND_LEAK_FILTER], stdin=subprocess.PIPE, stderr=os.dup(2))
    os.dup2(filt.stdin.fileno(), 2)  # the filter sees EOF when this process exits
    filt.stdin.close()


def pytest_unconfigure(config):
    import atexit
    import sys

    if "triton" in sys.modules and not os.environ.get("RECSTREAM_TEST_KEEP_NANOBIND_LEAKS"):
        # at exit, not now: pytest's capture still holds fd 2 here and puts it back after this hook
        atexit.register(_filter_nanobind_leaks)

