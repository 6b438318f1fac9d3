"""Responder rotation while the signer runs: renewal (same key, new certificate) and re-keying (a new
key in the token, new certificate), per CA.

Two triggers, one path:

- ``Rotator.rotate(ca, cert, key_label)`` (the Admin Rotate RPC, ``ocspctl rotate``): checks the
  candidate, persists it (the certificate to the CA's ``responder.cert`` file, a new ``key_label`` to
  its ca.d file) so a restart keeps it, then swaps.
- ``Rotator.reload()`` (SIGHUP): re-reads signer.toml and the ca.d ``[responder]`` tables, checks every
  responder that changed, and swaps them all, or none (a refused reload changes nothing).

A candidate is accepted only when the token holds its key (same SubjectPublicKeyInfo; for a re-key the
new label must exist), it is issued by the CA (signature), valid now, and carries id-kp-OCSPSigning
(or is the CA certificate itself, as the config allows). A refused candidate leaves the current
responder signing.

The swap is ``ResponderState.swap`` (signer.responder_state): one assignment of the holder's current
immutable ``ResponderSet``. Each Sign RPC reads that reference once, so a signature in flight finishes
with the responder (key label, certificate, generation) it started with, and every later one uses the
new. Old keys stay in the token. Every change gets a new generation (the set's counter plus one),
which reaches the frontends on each SignReply and through the Watch stream (which ``ResponderState``
serves), so they retire answers cached from the old responder.

Each check of a candidate runs once: a rotation parses the candidate certificate once and reads the
token's public key for it once, and hands those on (``candidate_problems``, then
``signer.responders.paired_responder`` for the probe signature), and the persisted file is encoded from
the same parsed certificate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import re
import tomllib
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from datetime import datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID

from shared.clock import Clock
from shared.config import ConfigError, parse_certificate
from signer.config import ResponderConfig, SignerConfig, load_signer_config
from signer.files import check_private_directory, os_error_text, write_atomic, write_problem
from signer.responder_state import TIME_FMT, ResponderState
from signer.responders import Responder, ResponderSet, canonical_spki, paired_responder, responder_algorithm
from signer.token import Token, TokenError
from signer.tomltext import toml_string

log = logging.getLogger("ocsp-signer")

EXPIRY_CHECK_INTERVAL = 3600.0  # seconds between expiry checks (each logs expiring responders)
MAX_KEY_LABEL = 128


class RotationError(Exception):
    """A refused rotation; ``code`` is the gRPC status the Admin caller gets."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- the candidate check (pure) ----------------------------------------------------------------------


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _canonical_spki(spki_der: bytes) -> bytes | None:
    try:
        return canonical_spki(spki_der)
    except ValueError:
        return None


def candidate_problems(ca: x509.Certificate, cert: x509.Certificate, token_spki: bytes, key_label: str,
                       now: datetime) -> list[str]:
    """Why ``cert`` cannot answer for ``ca`` with the token key ``key_label``; empty when it can."""
    problems: list[str] = []
    cert_spki = _spki(cert)
    if _canonical_spki(token_spki) != cert_spki:
        problems.append(f"its public key (SHA-256 {hashlib.sha256(cert_spki).hexdigest()[:16]}…) is not the "
                        f"token key {key_label!r} (SHA-256 {hashlib.sha256(token_spki).hexdigest()[:16]}…)")
    is_ca_itself = cert == ca
    if not is_ca_itself:
        try:
            cert.verify_directly_issued_by(ca)
        except ValueError:
            problems.append(f"it is not issued by the CA: its issuer is {cert.issuer.rfc4514_string()}, the CA "
                            f"is {ca.subject.rfc4514_string()}")
        except (InvalidSignature, TypeError):
            problems.append(f"its signature does not verify with the key of the CA "
                            f"({ca.subject.rfc4514_string()}): it was not issued by this CA")
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        problems.append(f"it is not valid yet (notBefore {not_before:{TIME_FMT}})")
    if now > not_after:
        problems.append(f"it has expired (notAfter {not_after:{TIME_FMT}})")
    if not is_ca_itself:
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
                problems.append("its extendedKeyUsage lacks id-kp-OCSPSigning (RFC 6960 4.2.2.2)")
        except x509.ExtensionNotFound:
            problems.append("it has no extendedKeyUsage with id-kp-OCSPSigning (RFC 6960 4.2.2.2)")
        except ValueError as e:
            problems.append(f"its extensions cannot be read: {e}")
    try:
        if not cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            problems.append("its keyUsage does not allow digitalSignature")
    except x509.ExtensionNotFound:
        pass
    except ValueError:
        pass  # reported above
    return problems


# -- persisting an RPC rotation ----------------------------------------------------------------------


def _not_writable(directory: Path) -> str:
    """Why the signer may not create files in ``directory`` (os.access said no)."""
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        return (f"its directory {directory} is on a read-only file system (EROFS; under systemd, a path the "
                "unit does not list in ReadWritePaths= or StateDirectory=)")
    return f"its directory {directory} is not writable by the signer's user (EACCES)"


_KEY_LABEL_LINE = re.compile(r"""^(\s*key_label\s*=\s*)("(?:[^"\\\n]|\\.)*"|'[^'\n]*')""")


def with_key_label(text: str, new_label: str) -> str | None:
    """``text`` (a ca.d file) with ``[responder] key_label`` set to ``new_label``, comments and layout
    kept; None when the file is written in a form this edit does not handle (inline or dotted tables).
    The result is re-parsed: it must differ from the original in that one value only."""
    lines = text.splitlines(keepends=True)
    table = ""
    hits = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            table = stripped.split("#", 1)[0].strip()
            continue
        if table == "[responder]":
            m = _KEY_LABEL_LINE.match(line)
            if m:
                lines[i] = m.group(1) + toml_string(new_label) + line[m.end():]
                hits += 1
    if hits != 1:
        return None
    out = "".join(lines)
    try:
        before, after = tomllib.loads(text), tomllib.loads(out)
    except tomllib.TOMLDecodeError:
        return None
    expected = dict(before)
    expected["responder"] = dict(before.get("responder", {}), key_label=new_label)
    return out if after == expected else None


# -- the rotator ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RotationPlan:
    """A rotation every check has passed, not yet persisted nor swapped."""

    rc: ResponderConfig  # the CA's responder config now
    new_rc: ResponderConfig  # ... and after the rotation
    cert: x509.Certificate  # new_rc.cert, parsed
    responder: Responder  # what will sign


@dataclasses.dataclass(frozen=True, slots=True)
class ReloadPlan:
    """A SIGHUP reload every check has passed, not yet swapped in."""

    config: SignerConfig  # the config re-read
    responders: ResponderSet  # the new set
    changed: tuple[str, ...]  # CAs whose responder changed (or is new)
    removed: tuple[str, ...]  # CAs no longer configured
    what: str  # for the log


@dataclasses.dataclass(frozen=True, slots=True)
class RotateResult:
    responder: Responder
    notes: tuple[str, ...]


class Rotator:
    """Decides changes to the responders (``state.swap``): RPC rotations, SIGHUP reloads; and the
    expiry checks."""

    def __init__(self, *, state: ResponderState, config: SignerConfig, token: Token, executor: Executor,
                 clock: Clock, reader: Callable[[Path], SignerConfig] = load_signer_config) -> None:
        self.state = state  # the current ResponderSet, and the Watch streams told of each swap
        self.config = config
        self.token = token
        self.executor = executor  # the one pkcs11 thread
        self.clock = clock
        self.reader = reader
        self.expiry_warning: timedelta = config.policy.expiry_warning
        self._lock = asyncio.Lock()
        self._expiry_task: asyncio.Task[None] | None = None
        self._commits: set[asyncio.Task[RotateResult]] = set()  # persist+swap steps under way
        self.counts: dict[tuple[str, str], int] = {}  # (kind, result) -> n, for metrics
        # Signer workers (signer.worker_link): an Admin rotation is the supervisor's to run on every worker.
        self.coordinator: Callable[[str, bytes, str], Awaitable[RotateResult]] | None = None

    def _count(self, kind: str, result: str) -> None:
        self.counts[(kind, result)] = self.counts.get((kind, result), 0) + 1

    # -- RPC rotation ----------------------------------------------------------------------------------
    async def rotate(self, ca_name: str, cert_data: bytes, key_label: str = "") -> RotateResult:
        """Check, persist and swap. The persist+swap step runs as a task the Rotator owns, shielded from
        the caller: a cancelled RPC (client deadline, admin server stopping) cannot leave the files
        written and the swap not done, and the lock stays held until that task has finished. In a
        signer worker the ``coordinator`` (the supervisor) does it on every worker instead."""
        if self.coordinator is not None:
            return await self.coordinator(ca_name, cert_data, key_label)
        await self._lock.acquire()
        handed_off = False
        try:
            try:
                plan = await self.prepare_rotation(ca_name, cert_data, key_label)
            except RotationError as e:
                self._refused(ca_name, e)
                raise
            task = asyncio.get_running_loop().create_task(self._commit(plan), name=f"rotate-{ca_name}")
            handed_off = True  # the task releases the lock when it is done
            self._commits.add(task)
            task.add_done_callback(self._commit_done)
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():
                    log.warning("rotation of CA %r: the caller went away while it was being persisted; it "
                                "completes anyway (rotations wait for it)", ca_name)
                raise
        finally:
            if not handed_off:
                self._lock.release()

    def _refused(self, ca_name: str, e: RotationError) -> None:
        self._count("rotate", "refused")
        log.error("rotation of CA %r refused: %s", ca_name, e.message)

    def _commit_done(self, task: asyncio.Task[RotateResult]) -> None:
        self._commits.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a refusal was logged by _commit; the caller may be gone

    async def prepare_rotation(self, ca_name: str, cert_data: bytes, key_label: str,
                               generation: int | None = None) -> RotationPlan:
        """Every check of a rotation of ``ca_name`` to ``cert_data`` (and ``key_label``, empty: the
        current one); nothing persisted or swapped. ``generation``: the new responder's (signer
        workers: the supervisor's count), else the current set's plus one. Raises RotationError."""
        current = self.state.current
        old = next((r for r in current if r.name == ca_name), None)
        rc = next((c for c in self.config.responders if c.name == ca_name), None)
        if old is None or rc is None:
            known = ", ".join(repr(r.name) for r in current) or "none"
            raise RotationError(grpc.StatusCode.NOT_FOUND, f"no CA named {ca_name!r} (configured: {known})")
        try:
            cert = parse_certificate(cert_data)
            cert_der = cert.public_bytes(Encoding.DER)
        except ValueError as e:
            raise RotationError(grpc.StatusCode.INVALID_ARGUMENT, f"the certificate {e}") from None
        except Exception as e:  # noqa: BLE001 - e.g. UnsupportedAlgorithm: never an UNKNOWN to the caller
            raise RotationError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"cannot use this certificate: {type(e).__name__}: {e}") from None
        label = key_label or old.key_label
        if len(label) > MAX_KEY_LABEL or not label.isprintable():
            raise RotationError(grpc.StatusCode.INVALID_ARGUMENT, "key_label: not a printable label of "
                                f"1..{MAX_KEY_LABEL} characters")
        if label == self.config.audit.key_label:
            raise RotationError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"key_label {label!r} is the audit key (audit.key_label); a responder needs a "
                                "key of its own")
        new_rc = dataclasses.replace(rc, cert=cert_der, key_label=label)
        if new_rc.cert == rc.cert and label == rc.key_label:
            raise RotationError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"CA {ca_name!r} already uses this certificate and key {label!r}")
        responder = await self._checked(new_rc, current.generation + 1 if generation is None else generation, cert)
        return RotationPlan(rc, new_rc, cert, responder)

    async def _commit(self, plan: RotationPlan) -> RotateResult:
        """Persist, then swap; runs to the end even when the RPC that asked for it is gone. Releases
        the lock ``rotate`` took."""
        try:
            notes = await asyncio.get_running_loop().run_in_executor(None, self.persist_rotation, plan)
            self.commit_rotation(plan, "Admin RPC")
            return RotateResult(plan.responder, tuple(notes))
        finally:
            self._lock.release()

    def persist_rotation(self, plan: RotationPlan) -> list[str]:
        """Write a checked rotation's files (``_persist``); blocking. A refusal is counted and logged."""
        try:
            return self._persist(plan.rc, plan.new_rc, plan.cert)
        except RotationError as e:
            self._refused(plan.rc.name, e)
            raise

    def commit_rotation(self, plan: RotationPlan, via: str) -> None:
        """Swap in a checked (and persisted) rotation."""
        self._swap([plan.new_rc], [plan.responder], f"rotation of {plan.rc.name!r} ({via})")
        self._count("rotate", "ok")

    async def drain(self) -> None:
        """Wait for rotations being persisted (the signer is stopping: let them finish their swap)."""
        while self._commits:
            await asyncio.gather(*self._commits, return_exceptions=True)

    async def _checked(self, rc: ResponderConfig, generation: int, cert: x509.Certificate | None = None) -> Responder:
        """The Responder for ``rc`` after the candidate check; RotationError saying why not. ``cert``:
        ``rc.cert`` parsed already (an RPC rotation), else parsed here. The certificate is parsed and
        the token's public key read once; every check gets those."""
        loop = asyncio.get_running_loop()
        try:
            token_spki = await loop.run_in_executor(self.executor, self.token.public_key, rc.key_label)
            if not await loop.run_in_executor(self.executor, self.token.has_key, rc.key_label):
                raise TokenError(f"no private key labelled {rc.key_label!r} in the token")
        except TokenError as e:
            raise RotationError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"refusing the new responder of CA {rc.name!r}: {e}") from None
        ca = x509.load_der_x509_certificate(rc.ca_cert)
        if cert is None:
            cert = x509.load_der_x509_certificate(rc.cert)
        try:
            problems = candidate_problems(ca, cert, token_spki, rc.key_label, self.clock.now())
        except Exception as e:  # noqa: BLE001 - an unsupported key or signature algorithm in the candidate
            raise RotationError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"refusing the new responder certificate of CA {rc.name!r} (serial "
                                f"{cert.serial_number:X}): it cannot be checked: {type(e).__name__}: {e}") from None
        if problems:
            raise RotationError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"refusing the new responder certificate of CA {rc.name!r} "
                                f"(serial {cert.serial_number:X}): " + "; ".join(problems))
        try:
            # candidate_problems compared the token key with the certificate's; the probe signature is left
            algorithm = responder_algorithm(rc, cert)
            return await loop.run_in_executor(self.executor, paired_responder, rc, cert, algorithm, self.token,
                                              generation)
        except ConfigError as e:
            raise RotationError(grpc.StatusCode.FAILED_PRECONDITION, e.message) from None
        except TokenError as e:
            raise RotationError(grpc.StatusCode.UNAVAILABLE, f"token: {e}") from None

    @staticmethod
    def _persist(old: ResponderConfig, new: ResponderConfig, cert: x509.Certificate) -> list[str]:
        """Write the new certificate (and key label) where the config names them. Blocking.

        Both new contents are prepared and both target directories checked before anything is
        written; the certificate goes first, and if the CA file cannot be written afterwards the old
        certificate bytes are put back, so the files on disk always describe one consistent
        responder (the running one, or the new one once this returns). ``cert``: ``new.cert``, parsed."""
        if old.cert_path is None:
            raise RotationError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"the responder.cert path of CA {old.name!r} is not known; not rotating")
        if old.cert == old.ca_cert:
            raise RotationError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"{old.file}: responder.cert is the CA certificate itself; give the responder "
                                "its own certificate file (edit the ca.d file and send SIGHUP)")
        cert_path = old.cert_path
        try:
            old_cert_bytes: bytes | None = cert_path.read_bytes()
        except FileNotFoundError:
            old_cert_bytes = None
        except OSError as e:
            raise RotationError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"cannot read {cert_path}: {e.strerror or e}; nothing was switched") from None
        pem_file = old_cert_bytes is None or b"-----BEGIN" in old_cert_bytes
        data = cert.public_bytes(Encoding.PEM if pem_file else Encoding.DER)
        ca_text: str | None = None
        if new.key_label != old.key_label:
            try:
                ca_text = with_key_label(old.file.read_text(), new.key_label)
            except OSError as e:
                ca_text = None
                why = e.strerror or str(e)
            else:
                why = "responder.key_label is not a plain key = \"value\" line in the [responder] table"
            if ca_text is None:
                raise RotationError(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"cannot update {old.file} ({why}); edit responder.cert and "
                                    f"responder.key_label there and send SIGHUP instead")
        # write_atomic creates a temporary file next to its target: both directories must allow it.
        targets = [cert_path] + ([old.file] if ca_text is not None else [])
        for target in targets:
            if not os.access(target.parent, os.W_OK | os.X_OK):
                raise RotationError(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"cannot write {target}: {_not_writable(target.parent)}; nothing was written "
                                    "or switched (the running responder would not survive a restart). Fix the "
                                    "permissions, or install the files yourself and send SIGHUP")
            try:
                check_private_directory(target.parent)
            except OSError as e:
                raise RotationError(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"refusing to write {target}: {e.strerror}; nothing was written or "
                                    "switched") from None
        notes = []
        try:
            write_atomic(cert_path, data, private_dir=True)
        except OSError as e:
            raise RotationError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"{write_problem(e, cert_path)}; nothing was "
                                "switched (the running responder would not survive a restart). Fix the "
                                "permissions, or install the files yourself and send SIGHUP") from None
        notes.append(f"wrote the new responder certificate to {cert_path}")
        if ca_text is not None:
            try:
                write_atomic(old.file, ca_text.encode(), private_dir=True)
            except OSError as e:
                why = write_problem(e, old.file)
                try:
                    if old_cert_bytes is None:
                        cert_path.unlink(missing_ok=True)
                    else:
                        write_atomic(cert_path, old_cert_bytes)
                except OSError as e2:
                    log.critical("rotation of CA %r: %s, and restoring the old certificate in %s failed too "
                                 "(%s): %s now holds the NEW certificate while %s still names key %r; a "
                                 "restart or SIGHUP will refuse it until you put the old certificate back or "
                                 "set responder.key_label = %r there", old.name, why, cert_path,
                                 os_error_text(e2), cert_path, old.file, old.key_label, new.key_label)
                    raise RotationError(grpc.StatusCode.FAILED_PRECONDITION,
                                        f"{why}; restoring the old certificate in {cert_path} failed too "
                                        f"({os_error_text(e2)}): the files on disk are INCONSISTENT (new "
                                        f"certificate, old key_label {old.key_label!r}). Nothing was switched; "
                                        f"put the old certificate back or set responder.key_label = "
                                        f"{new.key_label!r} in {old.file}") from None
                raise RotationError(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"{why}; the old certificate was restored in {cert_path} and nothing was "
                                    "switched. Fix the permissions, or install the files yourself and send "
                                    "SIGHUP") from None
            notes.append(f"set responder.key_label = {new.key_label!r} in {old.file}")
        return notes

    # -- SIGHUP reload ---------------------------------------------------------------------------------
    async def reload(self) -> bool:
        """Re-read the config; swap every changed responder after checking it, or none. True if swapped."""
        async with self._lock:
            try:
                plan = await self.plan_reload()
            except RotationError:
                return False
            if plan is None:
                return False
            self.commit_reload(plan)
            return True

    async def plan_reload(self, generation: int | None = None) -> ReloadPlan | None:
        """The checks of a SIGHUP reload, logged and counted: a ReloadPlan to commit, None when no
        responder changed; RotationError (FAILED_PRECONDITION, the problems) when refused. Call it
        holding ``lock``. ``generation``: of the new set (signer workers: the supervisor's count), else
        the current one's plus one."""
        loop = asyncio.get_running_loop()
        try:
            new_config = await loop.run_in_executor(None, self.reader, self.config.file)
        except ConfigError as e:
            self._count("reload", "refused")
            log.error("SIGHUP: reload refused, responders unchanged: %s", e)
            raise RotationError(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
        old_rcs = {rc.name: rc for rc in self.config.responders}
        current = {r.name: r for r in self.state.current}
        if generation is None:
            generation = self.state.current.generation + 1
        changed: list[ResponderConfig] = []
        problems: list[str] = []
        built: dict[str, Responder] = {}
        for rc in new_config.responders:
            if old_rcs.get(rc.name) == rc and rc.name in current:
                continue
            try:
                built[rc.name] = await self._checked(rc, generation)
                changed.append(rc)
            except RotationError as e:
                problems.append(f"{rc.file}: {e.message}")
        removed = sorted(set(current) - {rc.name for rc in new_config.responders})
        if problems:
            self._count("reload", "refused")
            for p in problems:
                log.error("SIGHUP: %s", p)
            log.error("SIGHUP: reload refused (%d problem%s), responders unchanged (generation %d)",
                      len(problems), "" if len(problems) == 1 else "s", self.state.current.generation)
            raise RotationError(grpc.StatusCode.FAILED_PRECONDITION, "; ".join(problems))
        outside = dataclasses.replace(new_config, responders=self.config.responders) != self.config
        if outside:
            log.warning("SIGHUP: only the ca.d [responder] tables are reloaded; other changes in %s "
                        "(listen, token, policy, admin, ...) need a restart", self.config.file)
        if not changed and not removed:
            self._count("reload", "unchanged")
            log.info("SIGHUP: responders unchanged (generation %d)", self.state.current.generation)
            return None
        order = [rc.name for rc in new_config.responders]
        responders = [built.get(name) or current[name] for name in order]
        what = ", ".join([*(repr(rc.name) for rc in changed), *(f"{n!r} removed" for n in removed)])
        return ReloadPlan(new_config, ResponderSet.of(responders, generation),
                          tuple(rc.name for rc in changed), tuple(removed), what)

    def commit_reload(self, plan: ReloadPlan) -> None:
        """Swap in a checked reload."""
        self.config = dataclasses.replace(self.config, responders=plan.config.responders)
        self._install(plan.responders, f"SIGHUP reload ({plan.what})")
        self._count("reload", "ok")

    @property
    def lock(self) -> asyncio.Lock:
        """Held by each rotation and reload from its checks to its swap (signer workers hold it from
        a prepare to its commit or abort)."""
        return self._lock

    # -- the swap ----------------------------------------------------------------------------------------
    def _swap(self, rcs: list[ResponderConfig], responders: list[Responder], why: str) -> None:
        by_name = {r.name: r for r in responders}
        new_set = ResponderSet.of([by_name.get(r.name, r) for r in self.state.current],
                                  max(r.generation for r in responders))
        names = {rc.name for rc in rcs}
        self.config = dataclasses.replace(
            self.config, responders=tuple(next(n for n in rcs if n.name == rc.name) if rc.name in names else rc
                                          for rc in self.config.responders))
        self._install(new_set, why)

    def _install(self, new_set: ResponderSet, why: str) -> None:
        self.state.swap(new_set, why)
        self.check_expiry()

    # -- expiry --------------------------------------------------------------------------------------------
    def check_expiry(self) -> list[Responder]:
        """Log every responder certificate that expires within ``expiry_warning`` (or has expired)."""
        now = self.clock.now()
        expiring = []
        for r in self.state.current:
            left = r.not_after - now
            if left <= timedelta(0):
                log.error("responder certificate of CA %r expired at %s: its requests fail (tryLater) until "
                          "it is rotated (ocspctl rotate)", r.name, f"{r.not_after:{TIME_FMT}}")
                expiring.append(r)
            elif left <= self.expiry_warning:
                log.warning("responder certificate of CA %r expires in %s (at %s), within the expiry_warning "
                            "of %s: rotate it (ocspctl rotate)", r.name, _days(left),
                            f"{r.not_after:{TIME_FMT}}", _days(self.expiry_warning))
                expiring.append(r)
        return expiring

    def start(self) -> None:
        self.check_expiry()
        self._expiry_task = asyncio.get_running_loop().create_task(self._expiry_loop(), name="expiry-check")

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_CHECK_INTERVAL)
            self.check_expiry()

    def close(self) -> None:
        """Stop the expiry checks (the signer is stopping)."""
        if self._expiry_task is not None:
            self._expiry_task.cancel()


def _days(d: timedelta) -> str:
    seconds = int(d.total_seconds())
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
