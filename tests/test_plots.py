"""The plotting code never picks matplotlib's backend: importing the run/report modules and drawing every
figure leaves the backend a user chose (here "svg") as it was, and the PNGs are still written."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import matplotlib
    matplotlib.use("svg")  # what a user (or a notebook) chose before importing us
    before = matplotlib.get_backend()
    import tall_jax.experiment, tall_jax.report, tall_jax.plots, tall_jax.two_tower.plots  # noqa: F401
    after_import = matplotlib.get_backend()
    import numpy as np
    from tall_jax import plots
    from tall_jax.two_tower import plots as tt_plots
    out = Path(sys.argv[1])
    history = [{"epoch": e, "valid_ndcg@20_by_group": {"low": 0.1 * e, "high": 0.2 * e},
                "weight_by_group": {"low": 1.0 + e, "high": 1.0}} for e in (1, 2, 3)]
    written = plots.plot_run(history, out, "test", best_epoch=2)
    written.append(tt_plots.plot_title_histograms({"a": np.ones((2, 4)) / 4}, ["t0", "t1"], out / "h.png"))
    written.append(tt_plots.plot_gains(["c0", "c1"], {"x": {"mean": np.ones(2), "std": np.zeros(2)}},
                                       out / "g.png"))
    print(json.dumps({"before": before, "after_import": after_import,
                      "after_plots": matplotlib.get_backend(),
                      "pyplot_loaded": "matplotlib.pyplot" in sys.modules,
                      "written": [str(p) for p in written]}))
""")


def test_importing_and_plotting_leave_the_backend_alone(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO, env=None, check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["before"] == got["after_import"] == got["after_plots"] == "svg"
    assert not got["pyplot_loaded"]
    assert len(got["written"]) == 4
    for path in got["written"]:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
