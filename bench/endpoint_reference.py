"""The reference for bench/endpoint.py: a minimal Flask app answering a cached token as JSON, the
way the original helper service did (a module-level cache, werkzeug's threaded server).

    python bench/endpoint_reference.py PORT TOKEN_FILE RESOURCE
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from flask import Flask, jsonify

app = Flask("reference")
CACHE: dict[str, Any] = {}


@app.route("/token")
def token() -> Any:
    return jsonify(CACHE)


if __name__ == "__main__":
    port, token_file, resource = sys.argv[1:4]
    CACHE.update(
        access_token=Path(token_file).read_text(),
        expires_on="9999999999",
        resource=resource,
        token_type="Bearer",
        client_id="bench",
    )
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app.run("127.0.0.1", int(port), threaded=True)
