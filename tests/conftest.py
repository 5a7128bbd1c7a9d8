"""Shared fixtures. Tests that need the real data files find them in ``$TALL_JAX_DATA`` or in
``../shared/data`` beside the checkout; under ``CI=true`` a missing file is a failure, elsewhere a skip."""
from __future__ import annotations

import os
from pathlib import Path

# Tests run tiny shapes, where XLA's optimisation passes take most of the time: ask for few of them
# (a third off the suite's time). Set before JAX is imported, so the programs the tests start in
# child processes inherit it too; JAX_DISABLE_MOST_OPTIMIZATIONS=0 restores the full pipeline.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_disable_most_optimizations",
                  os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("1", "true", "yes"))

# Silent broadcasting between arrays of different ranks is an error in every test: shapes are
# named and checked (docs/layout.md, "Conventions").
jax.config.update("jax_numpy_rank_promotion", "raise")

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("TALL_JAX_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder laid out like ``../shared/data``; fails under CI if absent, skips otherwise."""
    path = _shared_data_dir()
    if not (path / "ml-1m").is_dir():
        msg = f"real data not found at {path} (set TALL_JAX_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def require_file(path: Path) -> Path:
    """Return ``path`` if it exists; fail under CI, skip elsewhere."""
    if not path.exists():
        msg = f"data file missing: {path}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path
