"""The suite's lanes (testkit/lanes.py): the shape of xdist's scheduling they extend, and how node ids map."""

from xdist.scheduler import LoadScopeScheduling

from testkit.lanes import LANE_B, LaneScheduling, lane_of


def test_xdist_scope_scheduling_still_splits_scopes_by_a_method_of_that_name():
    assert callable(LoadScopeScheduling.__dict__.get("_split_scope"))
    assert LaneScheduling._split_scope is not LoadScopeScheduling._split_scope


def test_every_test_of_a_module_and_only_its_lane_share_a_scope():
    split = LaneScheduling._split_scope
    assert split(None, "tests/test_book_jobs.py::test_x") == split(None, "tests/test_studio.py::test_y[a::b]") == "b"
    assert split(None, "tests/test_service.py::test_z") == split(None, "tests/test_images.py::test_w[PNG]") == "a"
    assert {lane_of(f"tests.{name}") for name in LANE_B} == {"b"}
