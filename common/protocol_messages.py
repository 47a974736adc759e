"""Wire protocol v1: the message structs and the reason enums (frames: :mod:`~pdlink.common.protocol_codec`).

Sans-I/O: nothing here touches a socket. Every frame is one JSON object with a ``type`` tag;
only ``Hello``/``Welcome`` carry the protocol version (docs/protocol.md). Decoding checks the field
types and the value rules alike: ``msgspec.Meta`` constraints where they say the rule, ``__post_init__``
for what they cannot (msgspec runs it on decode too). A frame that breaks either becomes a
``ProtocolError("bad_field")``. Meta constraints are not checked when a struct is built in Python,
so ``ClientConnection.prefill()`` decodes its own frame once before it sends it.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta

from .reasons import FinishReason
from .sampling import SamplingParams

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
MAX_REQUEST_ID_CHARS = 128


class _WireText(str, enum.Enum):
    """A closed set of wire strings: members are ``str`` and print as their wire text."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class RejectReason(_WireText):
    """``rejected.reason``: why a request will not run. Decoded frames keep the plain string (peers may
    send reasons this version does not know); the server's side only sends these."""

    OVERLOADED = "overloaded"
    PROMPT_TOO_LONG = "prompt_too_long"
    INVALID_REQUEST = "invalid_request"
    UNAUTHORIZED = "unauthorized"
    SHUTTING_DOWN = "shutting_down"


class DoneReason(_WireText):
    """``done.reason``: why a request ended. ``DISCONNECTED`` appears only in the server's own logs."""

    STOPPED = "stopped"
    CANCELLED = "cancelled"
    MAX_LEADING_TOKENS = "max_leading_tokens"
    EOS = "eos"
    ERROR = "error"
    DISCONNECTED = "disconnected"

    @property
    def finish_reason(self) -> str:
        """The device-facing finish reason: ``eos`` -> "stop", ``max_leading_tokens`` -> "length",
        any other reason is its own wire text."""
        return _FINISH_REASONS.get(self, self.value)


_FINISH_REASONS = {DoneReason.EOS: FinishReason.STOP, DoneReason.MAX_LEADING_TOKENS: FinishReason.LENGTH}
REJECT_REASONS = frozenset(RejectReason)
DONE_REASONS = frozenset(DoneReason)


class ProtocolError(Exception):
    """A frame, or an action, that breaks the protocol.

    ``code`` is one of the error codes of docs/protocol.md; ``request_id`` is the request the
    frame named when it could be read; ``msg_type`` is the frame's ``type`` when it had one.
    """

    def __init__(self, code: str, message: str, request_id: str | None = None, msg_type: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.msg_type = msg_type


class LocalProtocolError(ProtocolError):
    """Raised by the connection objects' send methods when the local caller breaks the protocol (a bug)."""


def request_id_problem(request_id: object) -> str | None:
    """Why ``request_id`` is not a valid request id (1..128 printable characters), or None."""
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID_CHARS:
        return f"request_id must be a string of 1..{MAX_REQUEST_ID_CHARS} characters"
    if not request_id.isprintable():
        return "request_id must be printable"
    return None


def _check_request_id(request_id: str) -> None:
    """The whole request id rule, for ``__post_init__`` (``RequestId``'s ``Meta`` cannot say "printable")."""
    problem = request_id_problem(request_id)
    if problem:
        raise ValueError(problem)


# A client-chosen request id: 1..128 printable characters (printable: ``_check_request_id``).
RequestId = Annotated[str, Meta(min_length=1, max_length=MAX_REQUEST_ID_CHARS)]
TokenId = Annotated[int, Meta(ge=0)]  # the vocabulary's upper bound is the server's to check
ChatRole = Literal["system", "user", "assistant"]
CHAT_ROLES = frozenset(get_args(ChatRole))


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=False):
    """Base of every wire message; ``type`` (the tag) names the subclass on the wire."""


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """What a server accepts; sent in ``Welcome.limits``."""

    max_prompt_tokens: int = 4096
    max_leading_tokens: int = 64
    max_concurrent_requests: int = 4
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


class Numerics(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Which numbers a model runs (sent in ``Welcome.numerics``), so a device can tell whether the cloud's tokens
    are the ones it would compute itself: the checkpoint the weights came from, their storage format (a
    ``--quant`` name: ``f32`` for dequantized float32 weights), the KV cache's dtype, the compute dtype, the
    backend (``package`` or ``torch``) and, for a compiled package, its ``config_hash``. See
    :mod:`pdlink.common.numerics`."""

    checkpoint: str = ""
    weights: str = ""
    kv_dtype: str = ""
    compute: str = "float32"
    backend: str = ""
    config_hash: str = ""


class RefineOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Ask the cloud for a ``RefinedPrompt``: keep ``keep_ratio`` of the prompt, always the last ``window`` tokens
    (0 = the server's default)."""

    enabled: bool = True
    keep_ratio: Annotated[float, Meta(gt=0.0, le=1.0)] = 0.5
    window: Annotated[int, Meta(ge=0)] = 0


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One chat turn of ``PrefillRequest.prompt_messages``; the server renders its own chat template."""

    role: ChatRole
    content: str


# ---- client -> server -------------------------------------------------------------------------


class Hello(Message, tag="hello"):
    """First frame of every connection (client -> server)."""

    protocol_version: int
    model_id: str
    tokenizer_hash: str
    auth_token: str | None = None
    device_profile: dict[str, Any] | None = None
    client: str = ""


class PrefillRequest(Message, tag="prefill"):
    """Prefill one prompt and stream at most ``max_leading_tokens`` tokens (client -> server).

    Building one without exactly one non-empty prompt form, or with a bad ``request_id``, raises
    ``ValueError``; the ``Meta`` rules (k >= 1, token ids >= 0) hold from decoding on (and are checked by
    ``ClientConnection.prefill()``). Vocabulary and limits are the server's to check."""

    request_id: RequestId
    max_leading_tokens: Annotated[int, Meta(ge=1)]
    prompt_token_ids: list[TokenId] | None = None
    prompt_text: str | None = None
    prompt_messages: list[ChatMessage] | None = None
    sampling: SamplingParams = msgspec.field(default_factory=SamplingParams)
    stop_token_ids: list[TokenId] = []
    refine: RefineOptions | None = None

    def __post_init__(self):
        _check_request_id(self.request_id)
        given = [p for p in (self.prompt_token_ids, self.prompt_text, self.prompt_messages) if p is not None]
        if len(given) != 1:
            raise ValueError("exactly one of prompt_token_ids, prompt_text and prompt_messages must be given")
        if not given[0]:
            raise ValueError("the prompt is empty")


class Stop(Message, tag="stop"):
    """The client has what it needs through token ``after_index`` (0-based); the cloud sends no token past it."""

    request_id: RequestId
    after_index: Annotated[int, Meta(ge=0)]

    def __post_init__(self):
        _check_request_id(self.request_id)


class Cancel(Message, tag="cancel"):
    """Abandon a request; no more tokens for it, a ``Done(reason="cancelled")`` follows."""

    request_id: RequestId

    def __post_init__(self):
        _check_request_id(self.request_id)


class Ping(Message, tag="ping"):
    """Liveness / round-trip probe; answered by a ``Pong`` with the same ``nonce``."""

    nonce: int = 0


# ---- server -> client -------------------------------------------------------------------------


class Welcome(Message, tag="welcome"):
    """Answer to an accepted ``Hello`` (server -> client)."""

    protocol_version: int
    server: str
    model_id: str
    tokenizer_hash: str
    limits: Limits = msgspec.field(default_factory=Limits)
    features: list[str] = []  # optional capabilities; "refine": answers ``prefill.refine`` with a refined_prompt
    numerics: Numerics | None = None  # what the cloud's model computes (None: a server that does not say)


class Accepted(Message, tag="accepted"):
    """The request is queued; tokens follow."""

    request_id: str
    queue_position: int = 0
    estimated_ttft_s: float = 0.0
    prompt_tokens: int = 0


class Rejected(Message, tag="rejected"):
    """The request will not run; terminal (no ``Done`` follows). ``reason``: a ``RejectReason`` when sent by
    this version; a decoded one is a plain string, possibly one this version does not know."""

    request_id: str
    reason: str
    message: str = ""
    retry_after_s: float | None = None


class Token(Message, tag="token"):
    """One leading token. ``cloud_time_s`` is the server's monotonic clock (only differences mean anything)."""

    request_id: str
    index: int
    token_id: int
    text: str = ""
    cloud_time_s: float = 0.0


class RefinedPrompt(Message, tag="refined_prompt"):
    """Prompt token positions (increasing, 0-based) the device should keep when it prefills itself."""

    request_id: str
    kept_indices: list[int]
    keep_ratio: float


class Done(Message, tag="done"):
    """The request is over; terminal. ``reason``: a ``DoneReason`` when sent by this version; a decoded one
    is a plain string, possibly one this version does not know."""

    request_id: str
    reason: str
    tokens_sent: int
    cloud_busy_s: float = 0.0
    stop_after_index: int | None = None  # the client's stop index the server honoured (None: no stop)

    @property
    def finish_reason(self) -> str:
        """``DoneReason.finish_reason`` of ``reason``; a reason this version does not know passes through."""
        try:
            return DoneReason(self.reason).finish_reason
        except ValueError:
            return self.reason


class Error(Message, tag="error"):
    """Something about a frame was wrong. Never ends a request by itself; ``fatal`` ends the connection."""

    code: str
    message: str
    request_id: str | None = None
    fatal: bool = False


class Pong(Message, tag="pong"):
    """Answer to ``Ping``."""

    nonce: int = 0
