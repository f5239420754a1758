"""How cpu_share judges its measurement windows (pure logic: the windows are given; the
kernel side is tests/test_grading_probes.py, and the cgroups lab through the VM kernel is
tests/test_binder_like.py). Under emulation one 1 s window of a 0.25-core quota scatters by
more than ±10 % (0.196 to 0.285 cores measured in a guest); the windows taken together do not."""

import itertools

from labkit.grading import resources


def share_seen(monkeypatch, windows, expected=0.25, deadline=6.0, quota=0.25):
    """cpu_share's observation of a container whose successive 1 s windows measure
    `windows` ((cores, crowded) pairs, repeated); time passes only in the windows."""
    now = [0.0]
    given = itertools.cycle(windows)

    def window(container, seconds):
        cores, crowded, *throttled = next(given)
        now[0] += seconds
        # crowded: it waited half the window for a CPU and its quota ran out in `throttled` of
        # its periods (never, unless given; so the host, not the quota, may have set the
        # share); clear: it never waited
        periods = int(seconds * 10) if quota else 0
        return resources.CpuWindow(seconds, cores, 0.5 * seconds if crowded else 0.0, periods,
                                   throttled[0] if throttled else 0, low=cores, high=cores)

    monkeypatch.setattr(resources, "running_process", lambda target: type("Running", (), {"cgroup": None})())
    monkeypatch.setattr(resources, "_cpu_window", window)
    monkeypatch.setattr(resources.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(resources, "limits_of", lambda cgroup: {"cpus": quota})
    return resources.cpu_share("box", expected, tolerance=0.10, deadline=deadline)()


def test_windows_scattered_around_the_quota_pass_together(monkeypatch):
    scattered = [(0.285, False), (0.215, False), (0.28, False), (0.22, False)]   # each outside ±10 %
    seen = share_seen(monkeypatch, scattered)
    assert seen.passed, seen.observed
    assert "over 3 s" in seen.observed or "over 4 s" in seen.observed


def test_a_share_off_in_every_window_fails_together_too(monkeypatch):
    seen = share_seen(monkeypatch, [(0.30, False), (0.29, False)])
    assert not seen.passed and seen.observed == "achieved 0.30 cores over 3 s"   # 0.30, 0.29, 0.30
    assert not share_seen(monkeypatch, [(1.0, False), (0.9, False)]).passed   # no quota at all


def test_crowded_windows_are_left_out_of_the_sum(monkeypatch):
    # A loop with no quota, starved to a quarter core by a busy host: its crowded windows
    # say nothing about its share: "busy host, run again", no points, never a pass.
    seen = share_seen(monkeypatch, [(0.25, True), (0.24, True)], quota=None)
    assert not seen.passed and seen.retry and seen.observed.startswith("busy host, run again")
    # Only the clear windows are added up: two crowded ones at 0.25 would pull 0.3 down.
    assert not share_seen(monkeypatch, [(0.30, False), (0.20, True), (0.20, True)]).passed


def test_a_quota_missed_in_a_fifth_of_its_periods_is_a_busy_host_not_a_wrong_answer(monkeypatch):
    # A correct 0.25-core spinner under stress-ng --cpu 4 --io 2: its quota ran out in 8 of
    # 10 periods, the other 2 gave next to nothing, 0.20 cores. Trusted at 80 % of periods
    # (before), three such windows judged together failed it: "achieved 0.20 cores over 3 s".
    starved = [(0.20, True, 8)]
    seen = share_seen(monkeypatch, starved)
    assert not seen.passed and seen.retry and seen.observed.startswith("busy host, run again"), seen.observed
    assert "its quota ran out in 8 of 10 periods" in seen.observed
    # One window in which the quota ran out in 9 of 10 periods is what the quota gives: a pass.
    assert share_seen(monkeypatch, starved * 3 + [(0.24, True, 9)]).passed
    # A quota that is wrong runs out in every period however crowded the host: still wrong.
    wrong = share_seen(monkeypatch, [(0.20, True, 10)], quota=0.2)
    assert not wrong.passed and not wrong.retry and wrong.observed == "achieved 0.20 cores over 3 s"
