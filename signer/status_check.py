"""Does a status the signer is asked to sign agree with its own copy of the CA's status data?

Pure: a ``Snapshot`` (shared.status.base, loaded from the CA file's ``[status]`` table by the
frontend's own code), one ``SingleStatus`` that ``signer.policy`` has already validated, the
signer's clock reading and ``policy.max_clock_skew`` in; ``None`` (agrees) or a short reason out,
worded for the log and the audit record ("asked good, the data says revoked 2026-...").
Every check is a dictionary lookup and a few comparisons: nothing is parsed per request.

What must agree, for the item's serial:

- the status: the snapshot's ``status(serial)`` is what the frontend answers from the same data,
  so a serial the data does not list (never issued) agrees only with the configured answer
  (index.txt: unknown; CRL: ``unissued``, whose "revoked" is RFC 6960 2.2's extended revoked form);
- for revoked: the revocation time (whole seconds), the reason (absent matches only absent) and
  the invalidity date;
- the validity window, against ``snapshot.window(now)``:
  - data with a window of its own (a CRL; ``issued_at()`` is set): both halves carry the CRL's
    thisUpdate and nextUpdate unchanged, so no clock is involved: thisUpdate not earlier than the
    CRL's, nextUpdate not later than the CRL's. A thisUpdate before the data's is refused, except
    for the window of the CRL the current one replaced (``previous``, which the caller gives only
    for a short time after the replacement, ``status_verify.PREVIOUS_GRACE``), and only when the
    status agrees with both CRLs: a frontend that has not reloaded yet then gets its answers for the
    serials the new CRL did not change signed, true as of the older CRL's thisUpdate and within
    its validity, instead of tryLater for every serial of the CA until it reloads. A serial the new
    CRL changed still disagrees, and is refused;
  - data whose answers take the time they are made (index.txt): the frontend's thisUpdate is its
    own clock reading when it built the request. Its clock may be up to ``max_clock_skew`` either
    side of ours, and the request took time to arrive (``TRANSIT``), so thisUpdate may lie up to
    ``max_clock_skew + TRANSIT`` before our ``now`` (that it lies at most ``max_clock_skew`` ahead is
    ``signer.policy``'s rule); nextUpdate at most ``max_clock_skew`` after our window's; and
    nextUpdate - thisUpdate never longer than the data's validity (``status.validity``), whatever
    the clocks say;
  - data the signer's clock calls expired (a CRL past its nextUpdate) agrees with nothing.

A short reload skew is expected: both halves watch the same files, each every ``check_interval``.
``may_be_older(snapshot, item)`` says when the signer's data may be older than the frontend's; the
caller then reloads once (``FileStatusSource.refresh()``, a stat when nothing changed) and checks
again before refusing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.ocsp.errors import TryLater
from shared.ocsp.types import CertStatus, Revocation, SingleStatus, StatusInfo
from shared.status.base import Snapshot

# How long a request may take from the frontend's clock reading to ours, beyond the clock skew: the
# frontend's signer.timeout is 2 s by default; this is generous, and a backdated thisUpdate with the
# true status buys an attacker nothing.
TRANSIT = timedelta(seconds=30)


def check(snapshot: Snapshot, item: SingleStatus, now: datetime, max_clock_skew: timedelta,
          previous: Snapshot | None = None) -> str | None:
    """None when ``item`` is what the data allows at ``now``; else why not (one short sentence).
    ``previous``: the CRL ``snapshot`` replaced moments ago, whose window is still accepted for a
    status both agree on (see the module docstring)."""
    serial = item.cert_id.serial_int
    known = snapshot.status(serial)
    if item.status is not known.status:
        if not snapshot.listed(serial):
            return (f"asked {item.status.value} for a serial the data does not list (not issued), whose "
                    f"configured answer is {describe(known)}")
        return f"asked {item.status.value}, the data says {describe(known)}"
    if known.status is CertStatus.REVOKED:
        problem = _revocation(item.revocation, known.revocation)
        if problem:
            return problem
    problem = _window(snapshot, item, now, max_clock_skew)
    if problem is not None and previous is not None and _previous_window(previous, snapshot, item, now,
                                                                          max_clock_skew):
        return None
    return problem


def _previous_window(previous: Snapshot, snapshot: Snapshot, item: SingleStatus, now: datetime,
                     max_clock_skew: timedelta) -> bool:
    """Whether ``item`` is the replaced CRL's answer for a serial both CRLs agree on (its status
    already agrees with ``snapshot``): the same status and revocation there, and the window that CRL
    allows (``_window``: not expired). Only between CRLs (data with a window of its own), never
    index.txt."""
    if previous.issued_at() is None or snapshot.issued_at() is None:
        return False
    old = previous.status(item.cert_id.serial_int)
    if old.status is not item.status:
        return False
    if old.status is CertStatus.REVOKED and _revocation(item.revocation, old.revocation):
        return False
    return _window(previous, item, now, max_clock_skew) is None


def may_be_older(snapshot: Snapshot, item: SingleStatus) -> bool:
    """True when the signer's ``snapshot`` may be older than the data ``item`` was made from, so a
    reload may change the verdict: a CRL older than the asked thisUpdate, or data that carries no
    time of its own (index.txt, a CRL's issued-serials list, which changes without the CRL: a
    disagreement cannot tell whose copy is newer)."""
    issued = snapshot.issued_at()
    return issued is None or item.this_update > issued or snapshot.untimed()


def _revocation(asked: Revocation | None, known: Revocation | None) -> str | None:
    if asked is None or known is None:  # signer.policy requires a time for REVOKED; snapshots carry one
        return "revocation details missing (asked or in the data)"
    if _whole(asked.time) != _whole(known.time):
        return f"asked revocation time {_fmt(asked.time)}, the data says {_fmt(known.time)}"
    if asked.reason != known.reason:
        return f"asked revocation reason {_reason(asked)}, the data says {_reason(known)}"
    a, k = asked.invalidity_date, known.invalidity_date
    if (a is None) != (k is None) or (a is not None and k is not None and _whole(a) != _whole(k)):
        return f"asked invalidity date {_fmt_opt(a)}, the data says {_fmt_opt(k)}"
    return None


def _window(snapshot: Snapshot, item: SingleStatus, now: datetime, skew: timedelta) -> str | None:
    try:
        this_update, next_update = snapshot.window(now)
    except TryLater as e:
        return f"the signer's status data cannot answer: {e}"
    if snapshot.issued_at() is not None:  # the data's own window (a CRL): carried unchanged
        earliest, latest = this_update, next_update
    else:  # answers made at the frontend's clock reading (index.txt)
        earliest, latest = this_update - skew - TRANSIT, next_update + skew
    if item.this_update < earliest:
        return f"asked thisUpdate {_fmt(item.this_update)}, earlier than the data allows ({_fmt(earliest)})"
    if item.next_update > latest:
        return f"asked nextUpdate {_fmt(item.next_update)}, later than the data allows ({_fmt(latest)})"
    length, allowed = item.next_update - item.this_update, next_update - this_update
    if length > allowed:
        return f"asked a validity of {length}, longer than the data's {allowed}"
    return None


def describe(info: StatusInfo) -> str:
    """'good', 'unknown', 'revoked 2025-01-02T03:04:05Z keyCompromise' (for reasons and logs)."""
    rev = info.revocation
    if info.status is not CertStatus.REVOKED or rev is None:
        return info.status.value
    text = f"revoked {_fmt(rev.time)}"
    if rev.reason is not None:
        text += f" {_reason(rev)}"
    if rev.invalidity_date is not None:
        text += f" invalidity {_fmt(rev.invalidity_date)}"
    return text


def _reason(rev: Revocation) -> str:
    if rev.reason is None:
        return "(none)"
    first, *rest = rev.reason.name.lower().split("_")
    return first + "".join(w.capitalize() for w in rest)  # KEY_COMPROMISE -> keyCompromise


def _whole(t: datetime) -> datetime:
    return t.replace(microsecond=0)


def _fmt(t: datetime) -> str:
    return f"{t:%Y-%m-%dT%H:%M:%SZ}"


def _fmt_opt(t: datetime | None) -> str:
    return "(none)" if t is None else _fmt(t)
