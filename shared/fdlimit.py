"""The open-files limit (RLIMIT_NOFILE) raised to its hard limit at start, by both daemons.

Every client connection (frontend) and every gRPC connection and relayed unix-socket caller (signer)
is a file descriptor. Many systems start services with a soft limit of 1024 while the hard limit
allows far more (systemd: ``LimitNOFILE=1024:524288``): a process may raise its own soft limit up to
the hard one, so each daemon does at start and logs what it got. A hard limit below
``LOW_HARD_LIMIT`` is worth a WARNING: only root (or ``LimitNOFILE=`` in the unit) can raise it.

One of shared/'s few system calls (HACKING, Rules): both halves need the same few lines, and the
helper exists once.
"""

from __future__ import annotations

import logging
import resource

LOW_HARD_LIMIT = 4096
NR_OPEN_DEFAULT = 1 << 20


def raise_open_files_limit(log: logging.Logger) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; log the result (INFO, WARNING when the hard
    limit is below LOW_HARD_LIMIT). Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if hard == resource.RLIM_INFINITY or soft < hard:
        # RLIM_INFINITY as the hard limit: the kernel still caps it at fs.nr_open (1048576 by default).
        target = hard if hard != resource.RLIM_INFINITY else max(soft, NR_OPEN_DEFAULT)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("open files limit: cannot raise the soft limit %d to the hard limit %s: %s", soft,
                        _text(hard), e)
    shown = f"{_text(before)} -> {_text(soft)}" if soft != before else _text(soft)
    log.info("open files limit: %s (hard limit %s)", shown, _text(hard))
    if hard != resource.RLIM_INFINITY and hard < LOW_HARD_LIMIT:
        log.warning("open files limit: the hard limit is %d, below %d: every connection is a file "
                    "descriptor, so this process cannot hold many; raise it (LimitNOFILE=65536 in the "
                    "systemd unit, or the limits of whatever starts it)", hard, LOW_HARD_LIMIT)
    return soft


def _text(n: int) -> str:
    return "unlimited" if n == resource.RLIM_INFINITY else str(n)
