"""EnLFT (docs/fidelity.md#enlft): fine-tune the global WL model on the neighbourhoods of greedy anchors (all
anchors' copies trained together), then score every user by a similarity-weighted logit average."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tall_jax.baselines import local, scoring
from tall_jax.baselines.config import BaselineConfig
from tall_jax.baselines.lft import finetune_config, user_keys
from tall_jax.baselines.queue import chunk_size, train_models
from tall_jax.baselines.neighbours import enlft_anchors, enlft_weights, lft_neighbourhoods
from tall_jax.batching import UserData
from tall_jax.vae import Params


def run_enlft(data: UserData, train, global_params: Params, config: BaselineConfig, *,
              progress: bool = True):
    """EnLFT end to end. Returns per-user valid/test metrics of all users and diagnostics."""
    nb = lft_neighbourhoods(train, config.sim_threshold, config.cos_threshold, config.min_size,
                            None, config.alpha_mix)  # EnLFT: no 2000 cap
    anchors = np.asarray(enlft_anchors(nb.sim_NxN, config.n_anchors, config.anchor_penalty))
    lists = [nb.idx_NxL[a, :nb.len_N[a]] for a in anchors]
    lcfg = finetune_config(config)
    chunk = chunk_size(config, data.n_items, config.ft_batch, len(anchors))
    init = local.stack_params(global_params, len(anchors))
    params_A, _, epochs = train_models(data, init, user_keys(config.seed, anchors), lists, None, None,
                                       lcfg, chunk, progress=progress, desc="EnLFT")
    w_NxA = jnp.asarray(enlft_weights(nb.sim_NxN, anchors, config.agg_cut))
    fallback_users = int(np.sum(~np.any(np.asarray(w_NxA) != 0, axis=1)))
    evals = scoring.evaluate_users(scoring.enlft_scores,
                                   {"local": jax.device_put(params_A), "weights_NxK": w_NxA}, data,
                                   np.arange(data.n_users), config.eval_batch)
    raw = nb.sim_NxN[:, anchors]
    info = {"anchors": anchors.tolist(), "neighbourhood_sizes": [len(ell) for ell in lists],
            "users_with_raw_cosine_fallback": int(np.sum(~np.any(raw >= config.agg_cut, axis=1))),
            "users_with_zero_weights": fallback_users, "chunk": chunk,
            "epochs_per_anchor": epochs.tolist()}
    return evals, info
