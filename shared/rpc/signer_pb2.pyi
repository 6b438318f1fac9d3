from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HashAlgorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HASH_ALGORITHM_UNSPECIFIED: _ClassVar[HashAlgorithm]
    SHA1: _ClassVar[HashAlgorithm]
    SHA256: _ClassVar[HashAlgorithm]
    SHA384: _ClassVar[HashAlgorithm]
    SHA512: _ClassVar[HashAlgorithm]

class CertStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CERT_STATUS_UNSPECIFIED: _ClassVar[CertStatus]
    GOOD: _ClassVar[CertStatus]
    REVOKED: _ClassVar[CertStatus]
    UNKNOWN: _ClassVar[CertStatus]
HASH_ALGORITHM_UNSPECIFIED: HashAlgorithm
SHA1: HashAlgorithm
SHA256: HashAlgorithm
SHA384: HashAlgorithm
SHA512: HashAlgorithm
CERT_STATUS_UNSPECIFIED: CertStatus
GOOD: CertStatus
REVOKED: CertStatus
UNKNOWN: CertStatus

class CertId(_message.Message):
    __slots__ = ("hash_algorithm", "issuer_name_hash", "issuer_key_hash", "serial_number")
    HASH_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    ISSUER_NAME_HASH_FIELD_NUMBER: _ClassVar[int]
    ISSUER_KEY_HASH_FIELD_NUMBER: _ClassVar[int]
    SERIAL_NUMBER_FIELD_NUMBER: _ClassVar[int]
    hash_algorithm: HashAlgorithm
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial_number: bytes
    def __init__(self, hash_algorithm: _Optional[_Union[HashAlgorithm, str]] = ..., issuer_name_hash: _Optional[bytes] = ..., issuer_key_hash: _Optional[bytes] = ..., serial_number: _Optional[bytes] = ...) -> None: ...

class SingleStatus(_message.Message):
    __slots__ = ("cert_id", "status", "revocation_time", "revocation_reason", "invalidity_date", "this_update", "next_update")
    CERT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_REASON_FIELD_NUMBER: _ClassVar[int]
    INVALIDITY_DATE_FIELD_NUMBER: _ClassVar[int]
    THIS_UPDATE_FIELD_NUMBER: _ClassVar[int]
    NEXT_UPDATE_FIELD_NUMBER: _ClassVar[int]
    cert_id: CertId
    status: CertStatus
    revocation_time: int
    revocation_reason: int
    invalidity_date: int
    this_update: int
    next_update: int
    def __init__(self, cert_id: _Optional[_Union[CertId, _Mapping]] = ..., status: _Optional[_Union[CertStatus, str]] = ..., revocation_time: _Optional[int] = ..., revocation_reason: _Optional[int] = ..., invalidity_date: _Optional[int] = ..., this_update: _Optional[int] = ..., next_update: _Optional[int] = ...) -> None: ...

class SignRequest(_message.Message):
    __slots__ = ("request_id", "responses", "nonce")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    responses: _containers.RepeatedCompositeFieldContainer[SingleStatus]
    nonce: bytes
    def __init__(self, request_id: _Optional[str] = ..., responses: _Optional[_Iterable[_Union[SingleStatus, _Mapping]]] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class SignReply(_message.Message):
    __slots__ = ("ocsp_response", "generation", "responder_fingerprint")
    OCSP_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESPONDER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ocsp_response: bytes
    generation: int
    responder_fingerprint: str
    def __init__(self, ocsp_response: _Optional[bytes] = ..., generation: _Optional[int] = ..., responder_fingerprint: _Optional[str] = ...) -> None: ...

class SignBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SignRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SignRequest, _Mapping]]] = ...) -> None: ...

class SignError(_message.Message):
    __slots__ = ("code", "message", "refused")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    refused: bool
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., refused: _Optional[bool] = ...) -> None: ...

class SignBatchItem(_message.Message):
    __slots__ = ("reply", "error")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    reply: SignReply
    error: SignError
    def __init__(self, reply: _Optional[_Union[SignReply, _Mapping]] = ..., error: _Optional[_Union[SignError, _Mapping]] = ...) -> None: ...

class SignBatchReply(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[SignBatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[SignBatchItem, _Mapping]]] = ...) -> None: ...

class RespondersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Responder(_message.Message):
    __slots__ = ("issuer_certificate", "responder_certificate", "generation", "name", "not_before", "not_after", "expires_in", "responder_fingerprint", "key_label")
    ISSUER_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    RESPONDER_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    RESPONDER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    KEY_LABEL_FIELD_NUMBER: _ClassVar[int]
    issuer_certificate: bytes
    responder_certificate: bytes
    generation: int
    name: str
    not_before: int
    not_after: int
    expires_in: int
    responder_fingerprint: str
    key_label: str
    def __init__(self, issuer_certificate: _Optional[bytes] = ..., responder_certificate: _Optional[bytes] = ..., generation: _Optional[int] = ..., name: _Optional[str] = ..., not_before: _Optional[int] = ..., not_after: _Optional[int] = ..., expires_in: _Optional[int] = ..., responder_fingerprint: _Optional[str] = ..., key_label: _Optional[str] = ...) -> None: ...

class RespondersReply(_message.Message):
    __slots__ = ("responders",)
    RESPONDERS_FIELD_NUMBER: _ClassVar[int]
    responders: _containers.RepeatedCompositeFieldContainer[Responder]
    def __init__(self, responders: _Optional[_Iterable[_Union[Responder, _Mapping]]] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("serving", "detail")
    SERVING_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    detail: str
    def __init__(self, serving: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResponderState(_message.Message):
    __slots__ = ("issuers", "generation")
    ISSUERS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    issuers: _containers.RepeatedCompositeFieldContainer[IssuerGeneration]
    generation: int
    def __init__(self, issuers: _Optional[_Iterable[_Union[IssuerGeneration, _Mapping]]] = ..., generation: _Optional[int] = ...) -> None: ...

class IssuerGeneration(_message.Message):
    __slots__ = ("name", "issuer_sha256", "generation", "responder_fingerprint")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ISSUER_SHA256_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESPONDER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    name: str
    issuer_sha256: bytes
    generation: int
    responder_fingerprint: str
    def __init__(self, name: _Optional[str] = ..., issuer_sha256: _Optional[bytes] = ..., generation: _Optional[int] = ..., responder_fingerprint: _Optional[str] = ...) -> None: ...

class RotateRequest(_message.Message):
    __slots__ = ("ca", "certificate", "key_label")
    CA_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    KEY_LABEL_FIELD_NUMBER: _ClassVar[int]
    ca: str
    certificate: bytes
    key_label: str
    def __init__(self, ca: _Optional[str] = ..., certificate: _Optional[bytes] = ..., key_label: _Optional[str] = ...) -> None: ...

class RotateReply(_message.Message):
    __slots__ = ("generation", "responder_fingerprint", "key_label", "notes")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESPONDER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    KEY_LABEL_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    generation: int
    responder_fingerprint: str
    key_label: str
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, generation: _Optional[int] = ..., responder_fingerprint: _Optional[str] = ..., key_label: _Optional[str] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...
