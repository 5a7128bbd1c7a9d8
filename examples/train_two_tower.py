"""Train the baseline, baseline + upsampling and MTL two-tower models (Gampa et al. 2023) on synthetic
multi-territory data or the ML-1M zip-region adaptation, for one or several seeds, under the paper's
incremental day-by-day protocol (default) or one-shot; print the per-group AP table and relative gains;
write settings.json, two_tower_results.json and PNG plots into --out (default:
runs/two_tower/<dataset>-<hash>, <hash> naming every setting but the seeds, so two settings never
share a folder).

    python examples/train_two_tower.py --dataset synthetic --seed 0 1 2 --out runs/two_tower/synthetic
    python examples/train_two_tower.py --dataset ml-1m --data-dir /path/to/data --seed 0 1 2
    python examples/train_two_tower.py --dataset synthetic --preset paper --seed 0   # d = 512, batch 8192
    python examples/train_two_tower.py --data LOG --title-features T.npy --groups G.csv --seed 0   # your own log
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from tall_jax import identity, results
from tall_jax.two_tower.cli import (check_args, data_parallel_of, make_builder, make_parser, models_of, run_main,
                                    settings_of, train_config, variant_of)


def parse_args(argv=None):
    p = make_parser(__doc__.split("\n\n")[0], default_seeds=[0, 1, 2])
    p.add_argument("--out", default=None,
                   help="output folder for settings.json, two_tower_results.json and PNGs "
                        "(default: runs/two_tower/<dataset>-<hash of the settings>)")
    return check_args(p, p.parse_args(argv))


def main(argv=None) -> int:
    args = parse_args(argv)
    dp = data_parallel_of(args)  # before anything else touches jax: it may start jax.distributed
    from tall_jax.two_tower.experiment import run_seed
    from tall_jax.two_tower.parallel import is_main_process
    from tall_jax.two_tower.plots import plot_gains, plot_title_histograms
    from tall_jax.two_tower.report import summarise, text_report

    settings = {**settings_of(args), "variant": variant_of(args)}
    name = f"{args.dataset}-{identity.short_hash(settings_of(args))}"
    out = Path(args.out) if args.out else Path("runs") / "two_tower" / name
    cfg = train_config(args)
    build = make_builder(args)
    runs, infos, started = [], [], time.perf_counter()
    for seed in args.seeds:
        data = build(seed)
        infos.append(data.info)
        runs.append(run_seed(data, cfg, seed, models=models_of(args), progress=not args.no_progress, dp=dp))
        print(f"seed {seed} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if not is_main_process():  # every process trained the same models; process 0 writes them
        return 0
    # the folder only once every seed trained: a failed run leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    results.write_json(out / identity.SETTINGS_FILE, {**settings, "seeds": args.seeds})
    summary = summarise(runs, data.territory_names, data.group_names, data.case_titles)
    print(text_report(summary))
    if data.case_titles:  # your own logs have no case-study titles
        plot_title_histograms(summary["title_hist"], [c["name"] for c in data.case_titles], out / "title_histograms.png")
    plot_gains(data.territory_names, summary["gain"]["territory"], out / "territory_gains.png")
    record = {"dataset": args.dataset, "seeds": args.seeds, "variant": settings["variant"],
              "settings": settings_of(args), "train_config": settings["train"], "args": vars(args),
              "data_info": infos, "seconds": time.perf_counter() - started,
              "note": "AP per cell is averaged over test days; gains are per-day gains averaged over days, "
                      "then mean and sample std over seeds", **summary}
    results.write_results(out, results.to_jsonable(record), name="two_tower_results.json")
    print(f"wrote {out / 'two_tower_results.json'} and PNGs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main, "train_two_tower.py")
