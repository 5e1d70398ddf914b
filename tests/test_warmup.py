"""The warm-up's progress: the callback of kernels.warmup and the log lines it feeds."""

from __future__ import annotations

import logging

from lossd import kernels
from lossd.service.runner import Readiness, WarmupProgress


def test_warmup_reports_each_step_up_to_the_signature_count():
    seen: list[tuple[int, int]] = []
    count = kernels.warmup(progress=lambda done, total: seen.append((done, total)))
    assert seen, "no progress reported"
    assert {t for _, t in seen} == {count}
    dones = [d for d, _ in seen]
    assert dones == sorted(set(dones)) and dones[0] >= 1 and dones[-1] == count
    assert count == kernels.warmup()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lossd"]


def test_a_fast_warmup_logs_one_line(caplog):
    caplog.set_level(logging.INFO, logger="lossd")
    clock = FakeClock()
    p = WarmupProgress(10.0, clock)
    for done in range(1, 58):
        clock.now += 0.01
        p.update(done, 57)
    p.finish(57)
    assert _messages(caplog) == ["warm-up done: 57 kernel signatures in 0.6s; /readyz answers 200"]


def test_a_slow_warmup_logs_progress_and_time_left(caplog):
    caplog.set_level(logging.INFO, logger="lossd")
    clock = FakeClock()
    p = WarmupProgress(10.0, clock)
    for done in range(1, 61):  # 3 s a signature, 60 signatures
        clock.now += 3.0
        p.update(done, 60)
    p.finish(60)
    lines = _messages(caplog)
    assert lines[0].startswith("warm-up: compiling 60 kernel signatures")
    # reports at 12 s (4 done), 24 s (8 done), ...: the pace so far gives the time left
    assert lines[1] == "warm-up: 4 of 60 kernel signatures ready, about 2m48s left"
    assert lines[2] == "warm-up: 8 of 60 kernel signatures ready, about 2m36s left"
    progress = [x for x in lines if " of 60 " in x]
    assert len(progress) == 14  # every 12 s up to 168 s; none once all are done
    assert lines[-1] == "warm-up done: 60 kernel signatures in 3m00s; /readyz answers 200"


def test_readiness_feeds_readyz_and_the_log_from_the_real_warmup(caplog):
    caplog.set_level(logging.INFO, logger="lossd")
    readiness = Readiness(report_every=0.0)  # a line at every step
    readiness.start(True)
    assert readiness.ready.wait(120)
    assert readiness.error is None
    assert readiness.signatures == readiness.total == kernels.warmup()
    lines = _messages(caplog)
    steps = [x for x in lines if " kernel signatures ready, about " in x]
    assert steps and steps[-1].startswith(f"warm-up: {readiness.total - 2} of {readiness.total} ")
    assert lines[-1].startswith(f"warm-up done: {readiness.total} kernel signatures in ")
