"""``SessionConfig.engine_nice``: the session's engine thread runs at a lower CPU priority when asked."""

from __future__ import annotations

import os
import threading

import pytest

from pdlink.edge.session import SessionConfig, _lower_priority


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="thread priorities need os.setpriority (Linux)")
def test_lower_priority_changes_only_the_calling_thread():
    seen = {}

    def engine_thread():
        before = os.getpriority(os.PRIO_PROCESS, 0)
        _lower_priority(3)
        seen["engine"] = (before, os.getpriority(os.PRIO_PROCESS, 0))

    main_before = os.getpriority(os.PRIO_PROCESS, 0)
    t = threading.Thread(target=engine_thread)
    t.start()
    t.join(10)
    before, after = seen["engine"]
    assert after == min(19, before + 3)
    assert os.getpriority(os.PRIO_PROCESS, 0) == main_before  # this thread is untouched


def test_engine_nice_out_of_range_says_how_to_fix_it():
    with pytest.raises(ValueError, match="engine_nice must be in 0..19"):
        SessionConfig(engine_nice=-1)
    assert SessionConfig(engine_nice=5).engine_nice == 5
