"""Run the tests' Kubernetes API server (etcd + kube-apiserver) until stopped, for several test
runs to share:

    python -m tests.support.kube_serve DIR &    # DIR/port appears when it is ready
    TOKEND_TEST_KUBE=DIR pytest tests/kube/test_secret_sink.py
    kill %1                                     # SIGTERM or SIGINT: both processes stop

Each test still works in a namespace of its own. scripts/mutation.py runs one for the
`kubernetes` module: otherwise every mutant's test run would start a server (10-20 s each).
Tests that stop the API server (`apiserver_down`) fail on a shared one.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from tests.support.kube import running_kube


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m tests.support.kube_serve DIR", file=sys.stderr)
        return 2
    workdir = Path(sys.argv[1])
    workdir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C: both exit
    try:
        with running_kube(workdir) as server:
            print(f"kube-apiserver at {server.url}: TOKEND_TEST_KUBE={workdir}", flush=True)
            while True:
                signal.pause()
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
