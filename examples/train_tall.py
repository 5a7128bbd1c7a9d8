"""Train TALL (or a baseline / ablation) and print the per-group NDCG@20 table.

    python examples/train_tall.py                                  # TALL, 10 experts, synthetic data
    python examples/train_tall.py --model multvae tall             # two models side by side
    python examples/train_tall.py --dataset ml-1m --model tall --experts 10 --data-dir ../shared/data

Each model writes results.json, per_user_test.npz and PNG curves into --out/<dataset>/<model>/seed<k>.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tall_jax.baselines import BASELINES, make_baseline_config
from tall_jax.configs import DATASET_PRESETS, MODEL_PRESETS, MODELS, make_config
from tall_jax.metrics import RankingResult
from tall_jax.run import run_experiment

# CLI flag -> TALLConfig field (preset overrides; unset flags keep the faithful preset).
OVERRIDES = {
    "experts": "n_experts", "epochs": "max_epochs", "batch_size": "batch_size", "lr": "lr",
    "reg": "reg", "gap": "gap", "alpha": "alpha", "patience": "patience",
    "kkt_mode": "kkt_mode", "gate_temperature": "gate_temperature", "kl_reduction": "kl_reduction",
    "wl_gamma": "wl_gamma", "dropout": "dropout", "expert_chunk": "expert_chunk",
}
# CLI flag -> BaselineConfig field for --model loca / lft / enlft (spec §6.2-6.4).
BASELINE_OVERRIDES = {"local_models": "n_local", "anchors": "n_anchors", "users": "users",
                      "epochs": "max_epochs", "train_h": "train_h", "test_h": "test_h",
                      "chunk": "chunk", "patience": "patience"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic", choices=sorted(DATASET_PRESETS))
    p.add_argument("--model", nargs="+", default=["tall"], choices=MODELS + BASELINES, metavar="MODEL",
                   help=f"one or more of: {', '.join(MODELS + BASELINES)}")
    p.add_argument("--split", default=None, help="ml-1m: 'authors' (default) or 'random'")
    p.add_argument("--seed", type=int, nargs="+", default=[0])
    p.add_argument("--data-dir", default=None, help="folder laid out like shared/data (or $TALL_JAX_DATA)")
    p.add_argument("--out", default="runs", help="output root (default: runs/)")
    p.add_argument("--experts", type=int, help="E, number of experts (preset: 100; synthetic 10)")
    p.add_argument("--epochs", type=int, help="maximum epochs (preset: 10000, early stopping decides)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--reg", type=float, help="weight decay before division by E")
    p.add_argument("--gap", type=int, help="T, epochs without adaptive weights")
    p.add_argument("--alpha", type=float, help="alpha of the adaptive weights (Eq. 1)")
    p.add_argument("--patience", type=int)
    p.add_argument("--kkt-mode", choices=["paper", "exact"], help="paper: Eq. 3 + clamp; exact: simplex projection")
    p.add_argument("--gate-temperature", type=float)
    p.add_argument("--gate-stop-gradient", action="store_true", default=None)
    p.add_argument("--kl-reduction", choices=["sum_users", "mean", "per_user"])
    p.add_argument("--weight-per-item", action="store_true", default=None,
                   help="adaptive-weight signal l_u/|V_u| instead of l_u (spec §5.8)")
    p.add_argument("--wl-gamma", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--expert-chunk", type=int,
                   help="memory option: run experts in chunks of this size (bounds the [E,B,M] logits)")
    p.add_argument("--local-models", type=int, help="LOCA: number of local models (default 100)")
    p.add_argument("--anchors", type=int, help="EnLFT: number of anchors (default 100)")
    p.add_argument("--users", type=int, help="LFT: fine-tune a seeded random subset of this many users")
    p.add_argument("--train-h", type=float, help="LOCA training bandwidth (default 1.0; original LOCA 0.8)")
    p.add_argument("--test-h", type=float, help="LOCA test bandwidth (default 0.8; original LOCA 0.4)")
    p.add_argument("--chunk", type=int, help="LOCA/LFT/EnLFT: local models trained per call (0: by memory)")
    p.add_argument("--global-from", default=None, metavar="RUN_DIR",
                   help="LOCA/LFT/EnLFT: reuse a finished run folder as the global model (a multvae run "
                        "for LOCA, a wl run with the LFT-repo settings for LFT/EnLFT) instead of training one")
    p.add_argument("--resume", action="store_true", help="continue from <out>/.../last_state.msgpack")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {field: getattr(args, flag) for flag, field in OVERRIDES.items()}
    overrides["gate_stop_gradient"] = args.gate_stop_gradient
    overrides["weight_per_item"] = args.weight_per_item
    base_overrides = {field: getattr(args, flag) for flag, field in BASELINE_OVERRIDES.items()}

    def model_overrides(model: str) -> dict:
        """--experts applies to the mixtures only; MultVAE and WL are single models."""
        if model in BASELINES:
            return base_overrides
        single = MODEL_PRESETS.get(model, {}).get("n_experts") == 1
        return {k: v for k, v in overrides.items() if not (single and k == "n_experts")}

    try:
        if args.global_from is not None:
            if not any(m in BASELINES for m in args.model):
                raise ValueError(f"--global-from applies to {', '.join(BASELINES)} only; --model is "
                                 f"{' '.join(args.model)}")
            if not Path(args.global_from).is_dir():
                raise FileNotFoundError(f"--global-from {args.global_from}: no such run folder")
        for model in args.model:  # resolve every configuration before the first long run
            cfg = (make_baseline_config(model, **base_overrides) if model in BASELINES
                   else make_config(args.dataset, model, **model_overrides(model)))
            print(f"[{model}] {json.dumps(cfg.to_dict())}")
        summaries = {}
        for seed in args.seed:
            for model in args.model:
                out = Path(args.out) / args.dataset / model / f"seed{seed}"
                res = run_experiment(args.dataset, model, out_dir=out, split=args.split, seed=seed,
                                     data_dir=args.data_dir, progress=not args.no_progress,
                                     resume=args.resume, overrides=model_overrides(model),
                                     global_from=args.global_from if model in BASELINES else None)
                summary = RankingResult.from_json(res["test"])
                summaries[(model, seed)] = summary
                if model in BASELINES:
                    print(f"\n{model} seed {seed}: {res['wall_time_s']:.0f}s; evaluated users: "
                          f"{res['evaluated_users']} -> {out}")
                else:
                    print(f"\n{model} seed {seed}: best epoch {res['best_epoch']} of {res['epochs_run']}, "
                          f"{res['wall_time_s']:.0f}s ({res['seconds_per_epoch']:.2f}s/epoch) -> {out}")
                print(summary.table(("ndcg@20", "recall@20"), reference=res["paper"]))
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(summaries) > 1:
        print("\nTest NDCG@20 (best validation epoch):")
        for (model, seed), summary in summaries.items():
            row = "  ".join(f"{k}={v['ndcg@20']:.4f}" for k, v in summary.by_group().items())
            print(f"  {model:<12} seed {seed}: overall={summary.overall['ndcg@20']:.4f}  {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
