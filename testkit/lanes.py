"""The test suite in two lanes of modules, each run whole by one pytest-xdist worker (`-n 2` in pyproject.toml).

Most of a module's time is spent waiting on a server's one torch thread rather than computing, so two modules at a
time fill this machine's two cores. A lane is fixed, not handed out as workers come free, so that each worker knows
from its first module which servers its later modules need and starts them ahead (tests/conftest.py,
SharedServers), and so that the servers that must be one (the one on port 8000) or are costly to repeat (the faults
server, the two fail-closed starts) are started by one worker only. Lane "b" is these modules, each with servers
of its own or a long subprocess; lane "a" is every other module. They hold about equal time (docs/DESIGN.md,
"Tests: what the suite's time goes to").
"""

from __future__ import annotations

from pathlib import PurePosixPath

from xdist.scheduler import LoadScopeScheduling

LANE_B = {
    "test_book_jobs",
    "test_fullsize",
    "test_hardening",
    "test_lifecycle",
    "test_locust",
    "test_regions",
    "test_studio",
}


def lane_of(module_name: str) -> str:
    return "b" if module_name.rsplit(".", 1)[-1] in LANE_B else "a"


class LaneScheduling(LoadScopeScheduling):
    """xdist's scope scheduling (a scope's tests all go to one worker, in collection order) with a lane as the
    scope. Overrides `_split_scope`, the method xdist's own loadgroup scheduling overrides; its `@group` node-id
    suffix does not reach pytest 9's node ids, so the lane is read from the module's file in the node id."""

    def _split_scope(self, nodeid: str) -> str:
        return lane_of(PurePosixPath(nodeid.split("::", 1)[0]).stem)
