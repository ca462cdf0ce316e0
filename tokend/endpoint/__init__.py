"""The local token endpoint: unmodified Azure SDKs (App Service and IMDS managed-identity
protocols) and the original helper's clients (`POST /requesttoken`) ask tokend for a token over
HTTP and get the one it holds. A reader of the engine's query API, like `/status`.

This package's `__init__` imports nothing: the config model imports `tokend.endpoint.options`
alone.
"""
