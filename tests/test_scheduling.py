"""`make test`'s scheduler (tests/scheduling.py): the longest files first, and the modules that
share the eight-device child process in one scope (one worker, so one child)."""
import json
from collections import OrderedDict

from tests.scheduling import COMMITTED, EIGHT_DEVICES, HeaviestFirst
from tests.subprocess_devices import EIGHT_DEVICE_MODULES, _PROGRAMS


def _scheduler(seconds):
    s = HeaviestFirst.__new__(HeaviestFirst)      # no xdist session: only the ordering
    s.seconds = seconds
    return s


def test_eight_device_modules_are_one_scope_and_register_their_programs():
    s = _scheduler({})
    assert {s._split_scope(f"{m}::test_x[a]") for m in EIGHT_DEVICE_MODULES} == {EIGHT_DEVICES}
    assert s._split_scope("tests/test_train.py::test_x") == "tests/test_train.py"
    assert s._split_scope("book/.ci-01_x.ipynb::Cell 3") == "book/.ci-01_x.ipynb"
    import tests.test_moe_ep, tests.test_scan, tests.test_sharding, tests.test_step_figures  # noqa
    assert {p.rsplit("/tests/", 1)[1] for p, _ in _PROGRAMS.values()} == {
        m.removeprefix("tests/") for m in EIGHT_DEVICE_MODULES}


def test_longest_first_from_the_table_else_by_number_of_tests():
    s = _scheduler({"tests/test_a.py": 3.0, "book/.ci-x.ipynb": 50.0,
                    **{m: 10.0 for m in EIGHT_DEVICE_MODULES}})
    tests = lambda n: {f"t{i}": False for i in range(n)}   # noqa: E731
    s.workqueue = OrderedDict([("tests/test_a.py", tests(40)), ("tests/test_b.py", tests(100)),
                               ("book/.ci-x.ipynb", tests(5)), (EIGHT_DEVICES, tests(30))])
    order = []
    while s.workqueue:
        order.append(s.heaviest())
        s.workqueue.pop(order[-1])
    # 50 s; 4 x 10 s; 100 tests unknown: 20 s; 3 s (its 40 tests do not count: it is known)
    assert order == ["book/.ci-x.ipynb", EIGHT_DEVICES, "tests/test_b.py", "tests/test_a.py"]


def test_committed_table_covers_the_slow_files():
    table = json.loads(COMMITTED.read_text())
    # the shared eight-device child is timed under whichever of its files starts it: the
    # group's total is what schedules it
    assert sum(table.get(f, 0) for f in EIGHT_DEVICE_MODULES) > 60
    for f in ("tests/test_multiprocess.py", "tests/test_resume.py"):
        assert table.get(f, 0) > 20, f
