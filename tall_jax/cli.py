"""Shared pieces of the command-line programs: a help formatter that shows defaults, a parser whose
errors are one line with exit status 2, and the log set-up."""
from __future__ import annotations

import argparse
import logging


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout; adds "(default: X)" where the help does not state it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def show_progress_logs(verbose: bool = True) -> None:
    """Log tall_jax's progress messages (INFO when ``verbose``) as bare lines on stderr; other
    libraries log warnings only (JAX's backend probing, e.g. "Unable to initialize backend 'tpu'" on a
    CPU machine, is INFO)."""
    # force: a library imported earlier (absl, through orbax) may have set up the root logger already,
    # which would make basicConfig a no-op and print "INFO:tall_jax...:" prefixes
    logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True)
    logging.getLogger("tall_jax").setLevel(logging.INFO if verbose else logging.WARNING)
