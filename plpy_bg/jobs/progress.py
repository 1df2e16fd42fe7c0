"""pg_background_progress, the call a job makes from inside: kept apart from the launch path
(plpy_bg.api and what it imports), so that a fresh worker's first report is seen at once."""
from __future__ import annotations

from plpy_bg.dispatcher import client as dclient
from plpy_bg.errors import InvalidParameter, cut_utf8, require, sql_errors
from plpy_bg.jobs.limits import PROGRESS_MSG_LIMIT


@sql_errors
def report(plpy, GD, pct, msg) -> None:
    require("pct", pct)
    if not 0 <= pct <= 100:
        raise InvalidParameter(f"progress must be between 0 and 100: {pct}")
    # cut here, not only in the dispatcher: a 100 kB message costs the socket nothing then
    dclient.get(plpy, GD).request("progress", pct=pct, msg=cut_utf8(msg, PROGRESS_MSG_LIMIT))
