"""Short garbage-collector pauses with many tokens.

CPython's full collection walks every object the collector tracks, with the event loop stopped.
At 100,000 tokens that is about 1.8 million objects (the config, jobs, sinks, tokens) and over
a second, during which every refresh that comes due waits (bench/RESULTS.md, section 7). Those
objects live as long as the config does, so once start-up has settled they are frozen
(`gc.freeze()`): later collections walk only what was made since. Reference counting still frees
frozen objects that are dropped; only reference cycles among them would wait, so a reload that
replaced tokens thaws, collects and freezes again (one full collection: about a second at
100,000 tokens, once per such reload; an unchanged reload replaces nothing and skips it).
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("tokend")


def freeze_long_lived() -> None:
    """Collect what is garbage now, then keep every surviving object out of later collections."""
    started = time.perf_counter()
    gc.unfreeze()  # objects frozen before may have become garbage since: collect them too
    gc.collect()
    gc.freeze()
    log.debug(
        "garbage collector: %d objects frozen in %.2fs",
        gc.get_freeze_count(),
        time.perf_counter() - started,
    )
