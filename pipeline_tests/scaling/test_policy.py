"""Property tests of the scaling policy (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.scaling.policy import ScalingPolicy, ScalingState, decide, target_capacity

policies = st.builds(
    ScalingPolicy,
    target_per_worker=st.integers(1, 1000),
    min_capacity=st.integers(0, 3),
    max_capacity=st.integers(3, 50),
    activation_threshold=st.integers(0, 50),
    scale_in_cooldown_s=st.floats(0, 3600),
    scale_in_step=st.one_of(st.none(), st.integers(1, 5)),
)
backlogs = st.lists(st.integers(0, 100_000), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(policies, backlogs, st.floats(1, 120))
def test_never_outside_min_max(policy, series, dt):
    state = ScalingState()
    for i, backlog in enumerate(series):
        decision = decide(policy, state, backlog, i * dt)
        assert policy.min_capacity <= decision.desired <= policy.max_capacity
        state = decision.state


@settings(max_examples=300, deadline=None)
@given(policies, st.integers(0, 100_000), st.integers(0, 100_000))
def test_target_is_monotone_in_backlog(policy, a, b):
    low, high = sorted((a, b))
    assert target_capacity(policy, low) <= target_capacity(policy, high)


@settings(max_examples=300, deadline=None)
@given(policies, st.integers(0, 100_000), st.integers(0, 100_000), st.integers(0, 50))
def test_decision_is_monotone_in_backlog(policy, a, b, capacity):
    low, high = sorted((a, b))
    state = ScalingState(capacity=capacity, last_scale_out_at=0.0, last_needed_at=0.0)
    for now in (1.0, policy.scale_in_cooldown_s + 1):
        assert decide(policy, state, low, now).desired <= decide(policy, state, high, now).desired


@settings(max_examples=200, deadline=None)
@given(policies, st.integers(1, 100_000))
def test_scales_to_min_after_the_cooldown_when_idle(policy, backlog):
    state = decide(policy, ScalingState(), backlog, 0.0).state
    now = 0.0
    for _ in range(60):  # at most max_capacity steps of scale_in_step
        now += policy.scale_in_cooldown_s + 1
        state = decide(policy, state, 0, now).state
    assert state.capacity == policy.min_capacity
    # ... and not before the cooldown.
    busy = decide(policy, ScalingState(), backlog, 0.0)
    if busy.desired > policy.min_capacity and policy.scale_in_cooldown_s > 2:
        assert decide(policy, busy.state, 0, policy.scale_in_cooldown_s / 2).desired == busy.desired


@settings(max_examples=200, deadline=None)
@given(policies, st.integers(0, 100_000), st.floats(1, 600))
def test_no_oscillation_on_a_steady_backlog(policy, backlog, dt):
    state = ScalingState()
    changes = 0
    previous = None
    for i in range(50):
        decision = decide(policy, state, backlog, i * dt)
        if previous is not None and decision.desired != previous:
            changes += 1
        previous, state = decision.desired, decision.state
    assert changes == 0  # the first decision is the answer for a steady backlog


def test_scale_to_zero_example():
    policy = ScalingPolicy(target_per_worker=100, max_capacity=8, scale_in_cooldown_s=300)
    d = decide(policy, ScalingState(), 750, 0)
    assert d.desired == 8 and "scale out" in d.reason
    d = decide(policy, d.state, 120, 60)
    assert d.desired == 8 and "cooldown" in d.reason
    d = decide(policy, d.state, 0, 400)
    assert d.desired == 0 and "scale in" in d.reason
