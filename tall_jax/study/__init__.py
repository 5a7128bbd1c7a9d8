"""Multi-seed studies (``python -m tall_jax.study``): named variants, a resumable runner, the analysis
(paired tests, smoothed selection, gate and weight diagnostics) and the results page."""
