"""Requests made on a Simulation from outside its scenario, and their text form."""

from __future__ import annotations

import pytest

from pcpu_bpf.errors import ScenarioError
from pcpu_bpf.sim.request import AllocRequest, RequestOutcome
from pcpu_bpf.sim.simulation import Simulation


@pytest.mark.parametrize(
    ("text", "request_"),
    [
        ("16", AllocRequest(16, 8, False)),
        ("16/4", AllocRequest(16, 4, False)),
        ("40,atomic", AllocRequest(40, 8, True)),
        ("8/6,atomic", AllocRequest(8, 6, True)),
        ("0/0", AllocRequest(0, 0, False)),  # the allocator, not the parser, refuses it
    ],
)
def test_parse(text: str, request_: AllocRequest) -> None:
    assert AllocRequest.parse(text) == request_


@pytest.mark.parametrize("text", ["", "lots", "-8", "8/", "8/4,", "8,atomic/4", " 8"])
def test_parse_refuses_other_text(text: str) -> None:
    with pytest.raises(ScenarioError, match=r"is not SIZE\[/ALIGN\]\[,atomic\]"):
        AllocRequest.parse(text)


def test_allocated_request_stays_allocated() -> None:
    sim = Simulation("steady", 0, balance="manual")
    before = sim.events
    outcome = sim.request(64, 8)
    assert outcome.ptr is not None and not outcome.failed and outcome.rejection is None
    assert sim.events == before + 1 and sim.allocator.nr_cur_alloc == 1
    sim.allocator.free(outcome.ptr)  # a live percpu pointer


def test_silent_rejection_says_why() -> None:
    sim = Simulation("steady", 0, balance="manual")
    before = sim.events
    assert sim.request(8, 6) == RequestOutcome(None, "illegal alignment 6")
    assert sim.events == before


def test_atomic_request_without_populated_room_fails_with_an_event() -> None:
    sim = Simulation("steady", 0, balance="manual")
    before = sim.events
    outcome = sim.request(32768, 8, atomic=True)
    assert outcome.failed and outcome.ptr is None
    assert sim.events == before + 1  # percpu_alloc_percpu_fail


def test_rejection_stays_a_rejection_when_balance_work_runs_after_it() -> None:
    # every:2: the rejected request is operation 2, so the balance work the first one
    # asked for runs right after it and creates a chunk (an event); still no fail event.
    sim = Simulation("steady", 0, balance="every:2")
    assert sim.request(28672, 4).ptr is not None
    before = sim.events
    outcome = sim.request(8, 6)
    assert sim.events == before + 1 and not sim.allocator.balance_pending
    assert outcome == RequestOutcome(None, "illegal alignment 6") and not outcome.failed
