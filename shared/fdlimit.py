"""The open-files limit (RLIMIT_NOFILE) raised to its hard limit at start, by both daemons.

Every client connection (frontend) and every gRPC connection and relayed unix-socket caller (signer)
is a file descriptor. Many systems start services with a soft limit of 1024 while the hard limit
allows far more (systemd: ``LimitNOFILE=1024:524288``): a process may raise its own soft limit up to
the hard one, so each daemon does at start (``raise_open_files_limit``) and says what it got once it
serves (``log_open_files_limit``: a start that fails prints its one error line and nothing else).
A hard limit below ``LOW_HARD_LIMIT`` is worth a WARNING: only root (or ``LimitNOFILE=`` in the unit)
can raise it.

One of shared/'s few system calls (HACKING, Rules): both halves need the same few lines, and the
helper exists once.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

LOW_HARD_LIMIT = 4096
NR_OPEN_DEFAULT = 1 << 20  # the kernel's fs.nr_open default, the most an "unlimited" hard limit allows


@dataclass(frozen=True, slots=True)
class OpenFilesLimit:
    before: int  # the soft limit the process started with
    soft: int  # the soft limit now
    hard: int
    error: str | None = None  # why raising failed


_raised: OpenFilesLimit | None = None  # this process's (inherited by forked workers)


def raise_open_files_limit() -> OpenFilesLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit. Logs nothing (``log_open_files_limit`` does)."""
    global _raised
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before, error = soft, None
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, NR_OPEN_DEFAULT)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            error = str(e)
    _raised = OpenFilesLimit(before, soft, hard, error)
    return _raised


def log_open_files_limit(log: logging.Logger, limit: OpenFilesLimit | None = None) -> None:
    """The limit raised at start (``limit``, else this process's): INFO, and a WARNING when the hard
    limit is below LOW_HARD_LIMIT or raising failed. Nothing when it was never raised (tests)."""
    limit = limit or _raised
    if limit is None:
        return
    if limit.error is not None:
        log.warning("open files limit: cannot raise the soft limit %s to the hard limit %s: %s",
                    _text(limit.before), _text(limit.hard), limit.error)
    shown = f"{_text(limit.before)} -> {_text(limit.soft)}" if limit.soft != limit.before else _text(limit.soft)
    log.info("open files limit: %s (hard limit %s)", shown, _text(limit.hard))
    if limit.hard != resource.RLIM_INFINITY and limit.hard < LOW_HARD_LIMIT:
        log.warning("open files limit: the hard limit is %d, below %d: every connection is a file "
                    "descriptor, so this process cannot hold many; raise it (LimitNOFILE=65536 in the "
                    "systemd unit, or the limits of whatever starts it)", limit.hard, LOW_HARD_LIMIT)


def _text(n: int) -> str:
    return "unlimited" if n == resource.RLIM_INFINITY else str(n)
