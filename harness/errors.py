"""The one base of the harness's own errors: each names the input that is wrong and the way out, and the
command line prints it as it is (no traceback). Library failures inside a job are not these: they end as
failed records with their traceback."""

from __future__ import annotations


class HarnessError(Exception):
    """A wrong input or state the user can fix; the message says which and how."""
