"""tall_jax.results: the environment a run records names the code it ran from."""
import re
import shutil
import subprocess
from pathlib import Path

from tall_jax import results

ROOT = Path(results.__file__).resolve().parents[1]


def test_environment_records_the_commit_of_this_checkout():
    env = results.environment()
    assert {"jax", "backend", "devices", "python", "platform", "date", "commit"} <= set(env)
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        assert env["commit"] is None
        return
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", env["commit"])
    assert env["commit"].split("+")[0] == head
