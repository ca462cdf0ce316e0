"""Talking to identity providers: requests, credentials, responses and their failures."""

from tokend.oauth.client import Endpoint, HttpSettings, TokenClient, TokenRequest
from tokend.oauth.credentials import ClientAuth, Credential, build_credential
from tokend.oauth.errors import Peer, PermanentError, TokenError, TransientError
from tokend.oauth.token import MalformedResponse, Token, parse_token_response

__all__ = [
    "ClientAuth",
    "Credential",
    "Endpoint",
    "HttpSettings",
    "MalformedResponse",
    "Peer",
    "PermanentError",
    "Token",
    "TokenClient",
    "TokenError",
    "TokenRequest",
    "TransientError",
    "build_credential",
    "parse_token_response",
]
