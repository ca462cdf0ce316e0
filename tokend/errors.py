"""The one error hierarchy: every failure tokend reports is a `TokendError`.

Each carries a stable `code` (equal codes mean "the same problem again", whatever the per-attempt
details in the text), whether trying again can help (`transient`), and a one-line message that
never holds a secret or a token. Callers that retry (the engine, the publisher) decide by
`transient` and `retry_after` alone; what went wrong is the subclass's business.

Messages quote what peers said (an issuer, a key id, a library's reason), and an error's text
goes everywhere (logs, `/status`, `tokend status`): it is masked and cut once, when the error
is made, so no reader of it has to remember to.
"""

from __future__ import annotations

from tokend.redaction import one_line, redactor

MESSAGE_LIMIT = 1000
"""Characters of an error's text, at most: a peer's echo, however long, stays one readable line."""


class TokendError(Exception):
    """A failure worth reporting. `str()` is one safe line; `code` names the kind of problem."""

    transient: bool = False
    """Trying again later can help (a network blip, a 503). Otherwise an operator must act."""
    retry_after: float | None = None
    """Seconds the peer asked us to wait before trying again, if it said."""
    back_off_hard: bool = False
    """The peer asked for a long pause (e.g. Entra ID's loop detection): wait the maximum."""

    def __init__(self, message: str, *, code: str, transient: bool | None = None) -> None:
        self.message = redactor.shown(message, MESSAGE_LIMIT)
        super().__init__(self.message)
        self.code = one_line(code)
        if transient is not None:
            self.transient = transient

    @property
    def kind(self) -> str:
        """`transient` or `permanent`, as status output and metrics spell it."""
        return "transient" if self.transient else "permanent"


class ConfigError(TokendError):
    """The config cannot be used. `lines` holds one self-contained message per problem. They
    quote the config, never a peer (and never a secret's value), so they are not masked: with a
    line per token of a 100,000-token file, masking would cost seconds."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = [one_line(line) for line in lines]
        self.message = "\n".join(self.lines)
        Exception.__init__(self, self.message)
        self.code = "config"
