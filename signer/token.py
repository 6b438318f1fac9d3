"""The PKCS#11 token: the only module that talks to the HSM. Knows nothing of OCSP.

python-pkcs11 initialises the module without OS locking flags, so SoftHSM runs
without its own mutexes: two threads inside the token at once corrupt its heap.
Every call into the token therefore holds ``self._lock``. Parallelism comes from
processes, each with its own C_Initialize, session and login.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from asn1crypto import core, keys, x509

from signer.mechanisms import KEY_SPECS, SignatureAlgorithm, sign_with_key

log = logging.getLogger("signer.token")


class TokenError(Exception):
    """A token problem worded for the operator."""


class Token(Protocol):
    """Everything the signer's callers use of a token (Pkcs11Token; the tests' fakes)."""

    label: str  # the token's label, for messages and the audit log
    last_error: str | None  # why the last signature failed, None after a success (Health reads it)

    def sign(self, key_label: str, algorithm: SignatureAlgorithm, data: bytes) -> bytes: ...

    def has_key(self, label: str) -> bool: ...

    def close(self) -> None: ...

    def public_key(self, key_label: str) -> bytes: ...


def read_pin(pin_file: Path | None, pin_env: str | None, *, consume: bool = False) -> str:
    """The user PIN, from a file (first line) or an environment variable; never from config text.

    A PIN file readable by group or others is used with a warning. ``consume``: remove the
    environment variable once read (the signer does; one-shot tools need not)."""
    if pin_file is not None:
        try:
            st = pin_file.stat()
            pin = pin_file.read_text().splitlines()[0].strip() if st.st_size else ""
        except OSError as e:
            raise TokenError(f"cannot read PIN file {pin_file}: {e.strerror or e}") from None
        except IndexError:
            pin = ""
        if not pin:
            raise TokenError(f"PIN file {pin_file} is empty")
        if st.st_mode & 0o077:
            log.warning("PIN file %s is readable or writable by group or others (mode %04o): whoever reads "
                        "it can use every key in the token; make it 0400 or 0600, owned by the signer's "
                        "user", pin_file, stat.S_IMODE(st.st_mode))
        return pin
    if pin_env is not None:
        pin = os.environ.get(pin_env, "")
        if not pin:
            raise TokenError(f"environment variable {pin_env} (the token PIN) is not set")
        if consume:
            # Out of the environment once read: not inherited by anything this process starts, and
            # not in /proc/PID/environ's view of later lookups (the kernel's copy of the initial
            # environment stays readable by the same user only).
            os.environ.pop(pin_env, None)
        return pin
    raise TokenError("no PIN source: set token.pin_file or token.pin_env")


def softhsm_hint(module: str | Path) -> str:
    """What to add to "no token with label ..." when the module is SoftHSM and SOFTHSM2_CONF is not set
    (SoftHSM then reads /etc/softhsm/softhsm2.conf, seldom where the tokens were made); else ""."""
    if "softhsm" not in Path(module).name.lower() or "SOFTHSM2_CONF" in os.environ:
        return ""
    return " (SOFTHSM2_CONF is not set: SoftHSM reads /etc/softhsm/softhsm2.conf)"


def _tokens_found(lib: Any) -> str:
    """"tokens found: 'a' (serial ...), 'b'" or "no initialised token found", for an operator who
    asked for a token the module does not have."""
    try:
        found = [t for t in lib.get_tokens() if (t.label or "").strip()]
    except Exception as e:  # noqa: BLE001 - listing is only a hint; the lookup failed already
        return f"cannot list its tokens: {e}"
    if not found:
        return "the module has no initialised token"

    def serial(t: Any) -> str:
        raw = t.serial.decode(errors="replace") if isinstance(t.serial, bytes) else str(t.serial)
        return raw.strip()

    return "tokens found: " + ", ".join(f"{t.label.strip()!r} (serial {serial(t)})" for t in found)


@dataclass(frozen=True, slots=True)
class KeyAttributes:
    sensitive: bool
    extractable: bool
    key_type: str


class Pkcs11Token:
    """One module, one token, one logged-in R/W session, one lock."""

    def __init__(self, module: str | Path, *, pin: str, token_label: str | None = None,
                 token_serial: str | None = None) -> None:
        import pkcs11

        if (token_label is None) == (token_serial is None):
            raise TokenError("select the token by exactly one of label or serial")
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, str], Any] = {}
        try:
            lib = pkcs11.lib(str(module))
        except Exception as e:  # noqa: BLE001 - the loader raises RuntimeError/OSError with dlerror text
            raise TokenError(f"cannot load PKCS#11 module {module}: {e}") from None
        try:
            if token_label is not None:
                self._token = lib.get_token(token_label=token_label)
            else:
                self._token = lib.get_token(token_serial=token_serial.encode())  # type: ignore[union-attr]
        except pkcs11.NoSuchToken:
            which = f"label {token_label!r}" if token_label is not None else f"serial {token_serial!r}"
            raise TokenError(f"no token with {which} in {module}; {_tokens_found(lib)}{softhsm_hint(module)}") from None
        except pkcs11.MultipleTokensReturned:
            raise TokenError(f"several tokens are labelled {token_label!r}; select by serial") from None
        self._pin = pin  # kept to log in again after the HSM drops the session
        self._session = self._open_session()
        self.label = self._token.label
        # The last token failure, None while the session works (Health reports it).
        self.last_error: str | None = None

    def _open_session(self) -> Any:
        import pkcs11

        try:
            return self._token.open(user_pin=self._pin, rw=True)
        except pkcs11.PinIncorrect:
            raise TokenError("the token refused the PIN (wrong PIN); not retrying, to avoid locking it") from None
        except pkcs11.PinLocked:
            raise TokenError("the token's user PIN is locked") from None
        except pkcs11.PKCS11Error as e:
            raise TokenError(f"cannot open a session on the token: {type(e).__name__}") from None

    def _reopen(self) -> None:
        """After a session-level failure (HSM restarted, session closed, logged out): a new session
        and login, under the lock held by the caller. Raises TokenError when that fails too."""
        self._keys.clear()
        try:
            self._session.close()
        except Exception:  # noqa: BLE001, S110 - the old session is gone either way
            pass
        self._session = self._open_session()

    def close(self) -> None:
        with self._lock:
            self._keys.clear()
            try:
                self._session.close()
            except Exception:  # noqa: BLE001, S110 - closing at shutdown: nothing to do about a failure
                pass

    # -- keys ------------------------------------------------------------------
    def _key(self, label: str, kind: str) -> Any:
        import pkcs11
        from pkcs11 import ObjectClass

        cached = self._keys.get((kind, label))
        if cached is not None:
            return cached
        cls = ObjectClass.PRIVATE_KEY if kind == "private" else ObjectClass.PUBLIC_KEY
        try:
            key = self._session.get_key(object_class=cls, label=label)
        except pkcs11.NoSuchKey:
            raise TokenError(f"no {kind} key labelled {label!r} in token {self.label!r}") from None
        except pkcs11.MultipleObjectsReturned:
            raise TokenError(f"several {kind} keys are labelled {label!r} in token {self.label!r}") from None
        except pkcs11.PKCS11Error as e:
            raise TokenError(f"looking up {kind} key {label!r} failed: {type(e).__name__}") from None
        self._keys[(kind, label)] = key
        return key

    def has_key(self, label: str) -> bool:
        with self._lock:
            try:
                self._key(label, "private")
                return True
            except TokenError:
                return False

    def public_key(self, key_label: str) -> bytes:
        """SubjectPublicKeyInfo DER of the key pair labelled ``key_label``."""
        from pkcs11 import KeyType
        from pkcs11.util.ec import encode_ec_public_key
        from pkcs11.util.rsa import encode_rsa_public_key

        with self._lock:
            pub = self._key(key_label, "public")
            if pub.key_type == KeyType.RSA:
                rsa = keys.RSAPublicKey.load(encode_rsa_public_key(pub))
                # RSA's AlgorithmIdentifier carries explicit NULL parameters (RFC 3279 2.3.1),
                # so these bytes equal the SPKI in a certificate for the same key.
                return keys.PublicKeyInfo({
                    "algorithm": {"algorithm": "rsa", "parameters": core.Null()},
                    "public_key": rsa,
                }).dump()
            if pub.key_type == KeyType.EC:
                return encode_ec_public_key(pub)
            raise TokenError(f"key {key_label!r} is neither RSA nor EC")

    def key_attributes(self, key_label: str) -> KeyAttributes:
        from pkcs11 import Attribute

        with self._lock:
            priv = self._key(key_label, "private")
            return KeyAttributes(
                sensitive=bool(priv[Attribute.SENSITIVE]),
                extractable=bool(priv[Attribute.EXTRACTABLE]),
                key_type=priv.key_type.name,
            )

    def generate_key(self, key_label: str, spec: str) -> bytes:
        """Generate a non-extractable, sensitive key pair in the token. Returns the SPKI DER."""
        import pkcs11
        from pkcs11 import Attribute, KeyType
        from pkcs11.util.ec import encode_named_curve_parameters

        if spec not in KEY_SPECS:
            raise TokenError(f"unknown key type {spec!r}; one of {', '.join(KEY_SPECS)}")
        if self.has_key(key_label):
            raise TokenError(f"a key labelled {key_label!r} already exists in token {self.label!r}")
        kind, size = KEY_SPECS[spec]
        key_id = os.urandom(16)
        private_template = {
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.PRIVATE: True,
            Attribute.SIGN: True,
            Attribute.DECRYPT: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
        }
        public_template = {Attribute.VERIFY: True, Attribute.ENCRYPT: False, Attribute.WRAP: False}
        with self._lock:
            try:
                if kind == "rsa":
                    self._session.generate_keypair(
                        KeyType.RSA, size, label=key_label, id=key_id, store=True,
                        public_template=public_template, private_template=private_template)
                else:
                    params = self._session.create_domain_parameters(
                        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(size)}, local=True)
                    params.generate_keypair(
                        label=key_label, id=key_id, store=True,
                        public_template=public_template, private_template=private_template)
            except pkcs11.PKCS11Error as e:
                raise TokenError(f"key generation failed in the token: {type(e).__name__}") from None
            self._keys.pop(("private", key_label), None)
            self._keys.pop(("public", key_label), None)
        return self.public_key(key_label)

    # -- certificates ------------------------------------------------------------
    def store_certificate(self, label: str, cert_der: bytes) -> None:
        """Store a CKO_CERTIFICATE labelled ``label``, replacing older ones of that label.

        The object gets the private key's CKA_ID, the usual way tools (pkcs11-tool, p11-kit)
        pair a certificate with its key.
        """
        import pkcs11
        from pkcs11 import Attribute, CertificateType, ObjectClass

        cert = x509.Certificate.load(cert_der)
        with self._lock:
            try:
                key_id = self._key(label, "private")[Attribute.ID]
            except (TokenError, pkcs11.PKCS11Error):
                key_id = b""
            try:
                query = {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: label}
                old = list(self._session.get_objects(query))
                template = {
                    Attribute.CLASS: ObjectClass.CERTIFICATE,
                    Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: False,
                    Attribute.LABEL: label,
                    Attribute.VALUE: cert_der,
                    Attribute.SUBJECT: cert.subject.dump(),
                    Attribute.ISSUER: cert.issuer.dump(),
                    Attribute.SERIAL_NUMBER: cert["tbs_certificate"]["serial_number"].dump(),
                }
                if key_id:
                    template[Attribute.ID] = key_id
                self._session.create_object(template)
                for obj in old:
                    obj.destroy()
            except pkcs11.PKCS11Error as e:
                raise TokenError(f"cannot store the certificate in token {self.label!r}: "
                                 f"{type(e).__name__}") from None

    def certificates(self, label: str) -> list[bytes]:
        """DER of every certificate object labelled ``label``."""
        from pkcs11 import Attribute, ObjectClass

        with self._lock:
            objs = self._session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: label})
            return [bytes(o[Attribute.VALUE]) for o in objs]

    # -- signing -----------------------------------------------------------------
    def sign(self, key_label: str, algorithm: SignatureAlgorithm, data: bytes) -> bytes:
        import pkcs11

        with self._lock:
            try:
                signature = sign_with_key(self._key(key_label, "private"), algorithm, data)
            except (pkcs11.PKCS11Error, TokenError) as first:
                # A stale key handle, or a session the HSM dropped (restart, logout): one retry on a
                # fresh session and login. Nothing is retried beyond that.
                try:
                    self._reopen()
                    signature = sign_with_key(self._key(key_label, "private"), algorithm, data)
                except (pkcs11.PKCS11Error, TokenError) as e:
                    cause = e if isinstance(e, TokenError) else f"{type(e).__name__}"
                    self.last_error = f"signing with {key_label!r} failed: {cause} (first: {type(first).__name__})"
                    raise TokenError(self.last_error) from None
            self.last_error = None
            return signature
