"""The command-line programs (``tall-jax-train``, ...): argument parsing and messages only; every
decision is made by the library modules they call."""
