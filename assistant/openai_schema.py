"""OpenAI's request shapes (pydantic): ``/v1/chat/completions`` and ``/v1/completions``, plus ``x_pdlink``.

Fields the OpenAI API has and this server does not use (``user``, ``presence_penalty``...) are accepted and
ignored, as llama.cpp's and vLLM's servers do; values that would change the answer in a way this server
cannot honour (``n > 1``, ``logprobs``) are refused with a clear message.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pdlink.edge.session import MODES
from pdlink.edge.session_settings import REFINE_MODES


class PdlinkOptions(BaseModel):
    """The extension field ``x_pdlink``: how the P/D session runs this request (defaults: the server's)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal[MODES] | None = None  # type: ignore[valid-type]
    k: int | None = Field(default=None, ge=0, le=4096)  # cloud tokens (pd mode)
    refine: Literal[REFINE_MODES] | None = None  # type: ignore[valid-type]
    timeline: bool = False  # add the request's timeline events to the response's x_pdlink


class Sampling(BaseModel):
    """The sampling fields both endpoints share, with OpenAI's ranges."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    n: int = 1
    logprobs: bool | int | None = None
    x_pdlink: PdlinkOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v):
        if v != 1:
            raise ValueError("only n=1 is supported")
        return v

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v):
        if v:
            raise ValueError("logprobs are not supported")
        return v

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = ""

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _max(self):
        if self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return self

    def template_messages(self) -> list[dict]:
        """The messages as the chat template takes them (``developer`` is the newer name for ``system``)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(Sampling):
    """``POST /v1/completions``: the prompt is raw text (no chat template) or token ids."""

    prompt: str | list[str] | list[int]
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], str):
            if len(v) != 1:
                raise ValueError("only one prompt per request is supported")
            v = v[0]
        if not v:
            raise ValueError("the prompt is empty")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v):
        if v:
            raise ValueError("echo is not supported")
        return v
