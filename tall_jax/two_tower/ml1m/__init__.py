"""The MovieLens-1M adaptation of the multi-territory protocol (docs/fidelity.md#two-tower-synthetic).

Two builders:

- ``make_ml1m_days`` (the default): days from the rating timestamps of a raw ``ratings.dat`` (the full
  file, or the staged partial file of users 1-2999 when only that exists). Each user's earliest
  ``history_frac`` ratings are the history behind the user embedding; every later rating is a first-time
  "discovery" positive on its day. Days are ``n_train_days + n_test_days`` consecutive time windows with
  equal numbers of discoveries (ML-1M activity is very bursty: most of it falls in late 2000, so calendar
  days would leave most days nearly empty). Users are split into disjoint training, validation and test
  pools: the test users are a random ``test_frac`` of the users with discoveries in the test window, each
  evaluated on one test day only (its first with discoveries); the rest are split into a validation pool
  (``valid_pool_frac`` of all users) and the training pool.
- ``make_ml1m_two_tower`` (``--ml1m-days split``, the earlier one-shot adaptation): the TALL authors'
  random split, one training "day" (test-split positives of the training pool) and three test "days"
  that are disjoint user sets, not time windows.

Common to both:

- Territories: the first digit of the zip code in ``users.dat`` (US ZIP prefixes 0..9, all 6,040 users
  have a numeric zip). Groups (US geography, each mixing a large and small regions):
  Northeast {0: New England/NJ/PR, 1: NY/PA/DE}; South {2: DC/MD/VA/WV/NC/SC, 3: FL/GA/AL/TN/MS,
  7: TX/OK/AR/LA}; Midwest {4: MI/OH/IN/KY, 5: MN/WI/IA/Dakotas/MT, 6: IL/MO/KS/NE};
  West {8: CO/AZ/UT/NM/NV/ID/WY, 9: CA/OR/WA/AK/HI}.
- Title features: 18 genre indicators from ``movies.dat`` + the release year parsed from the title
  ("(1995)"), standardised. TALL item ids are mapped to MovieIDs by first appearance in a raw
  ``ratings.dat`` found in the data dir (full or the staged partial file), else by the derived table
  ``ml-1m/derived/tall_item_to_movie_id.csv``; items without a MovieID are left out of every example.
- User features: a user embedding handed in by the caller (the MultVAE mu of
  :mod:`tall_jax.two_tower.embedding`, trained by the experiment layer), or the truncated SVD these
  builders compute themselves. The builders train nothing.
- Examples: users are split into a training pool and ``n_test_days`` disjoint test "days"; positives are
  the user's held-out (test-split) interactions, negatives are uniform unseen titles at ratio ``alpha``.
  "Active" users (paper §3.2: recent activity) are those whose validation-split count (the proxy for a
  recent window) is in the top ``1 - active_quantile``.
"""
from tall_jax.two_tower.ml1m.common import (  # noqa: F401
    GENRES, RAW_RATINGS, ZIP_GROUPS, item_movie_ids, read_timed_ratings, svd_user_embedding, territory_groups,
    title_features, user_territories,
)
from tall_jax.two_tower.ml1m.days import history_embedding, make_ml1m_days  # noqa: F401
from tall_jax.two_tower.ml1m.split import make_ml1m_two_tower  # noqa: F401
