"""Request bodies of the OpenAI-compatible endpoints, validated strictly, and the OpenAI error shape.

Strict: a field of the wrong type ("max_tokens": "5") and an unknown field are 400 errors, as in the
OpenAI API. Fields the OpenAI API has but this server cannot honour (n > 1, logprobs, penalties, echo)
are accepted only with their neutral values. Extra fields of this server: `k` (passages to read per
prompt, 0 = closed book; default the server's k) and, in responses, `retrieval`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class APIError(Exception):
    """Answered as {"error": {"message", "type", "param", "code"}} with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Generate(_Strict):
    model: str
    max_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    user: str | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    k: int | None = None

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for an OpenAI option this server cannot honour, else None."""
        if self.n != 1:
            return "n", "only n=1 is supported"
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                return name, f"{name} is not supported (only 0)"
        return None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(_Generate):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def unsupported(self) -> tuple[str, str] | None:
        if self.echo:
            return "echo", "echo is not supported"
        if self.logprobs:
            return "logprobs", "logprobs are not supported"
        if self.best_of not in (None, 1):
            return "best_of", "only best_of=1 is supported"
        if self.suffix:
            return "suffix", "suffix is not supported"
        return super().unsupported()


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None


class ChatRequest(_Generate):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None

    def unsupported(self) -> tuple[str, str] | None:
        if self.logprobs:
            return "logprobs", "logprobs are not supported"
        return super().unsupported()


class RetrieveRequest(_Strict):
    input: str | list[str]
    model: str | None = None
    k: int | None = None
    user: str | None = None


_CODES = {
    "json_invalid": "invalid_json",
    "extra_forbidden": "unknown_parameter",
    "missing": "missing_required_parameter",
}


def validation_error(e: ValidationError) -> APIError:
    """The first problem of a pydantic error as an OpenAI-shaped 400 naming the parameter."""
    err = e.errors()[0]
    loc = [str(x) for x in err.get("loc", ())]
    # unions report each branch ("prompt.str", "prompt.list[str].0"): keep the request's own path
    param = ".".join(
        x for x in loc if not any(c in x for c in "[]") and x not in ("str", "int", "float", "bool")
    )
    kind = err.get("type", "")
    if kind == "json_invalid":
        return APIError(400, f"the request body is not valid JSON ({err.get('msg')})", code="invalid_json")
    if kind == "model_attributes_type" or (not param and kind.endswith("_type")):
        return APIError(400, "the request body must be a JSON object", code="invalid_type")
    if kind == "extra_forbidden":
        return APIError(
            400, f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter"
        )
    code = _CODES.get(kind, "invalid_type" if kind.endswith("_type") else "invalid_value")
    return APIError(400, f"{param}: {err.get('msg')}", param=param or None, code=code)
