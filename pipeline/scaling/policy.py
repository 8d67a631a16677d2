"""The queue-depth scaling policy (DESIGN.md section 6), as a pure function.

    desired = clamp(ceil(backlog / target_per_worker), min, max)   when backlog >= activation
    desired = min                                                     otherwise

Scale-out is immediate. Scale-in waits until the backlog has not needed the current capacity
for ``scale_in_cooldown_s`` (and as long after the last scale-out), then drops at most
``scale_in_step`` workers per decision. This is the "backlog per instance" form of AWS target
tracking and KEDA's ``queueLength``; the cooldown is what keeps a steady or noisy backlog from
flapping. Busy-worker protection is the capacity backends' job (instance / task protection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ScalingPolicy:
    target_per_worker: int = 200  # backlog one worker is expected to drain in an acceptable time
    min_capacity: int = 0
    max_capacity: int = 10
    activation_threshold: int = 1  # below this backlog, capacity may go to min (0: scale to zero)
    scale_in_cooldown_s: float = 300.0
    scale_in_step: int | None = None  # None: straight to the target once the cooldown has passed

    def __post_init__(self):
        if self.target_per_worker < 1 or self.min_capacity < 0 or self.max_capacity < self.min_capacity:
            raise ValueError(f"inconsistent scaling policy: {self}")


@dataclass(frozen=True)
class ScalingState:
    capacity: int = 0
    last_scale_out_at: float | None = None
    last_needed_at: float | None = None  # last time the backlog needed at least the current capacity


@dataclass(frozen=True)
class Decision:
    desired: int
    state: ScalingState
    reason: str


def target_capacity(policy: ScalingPolicy, backlog: int) -> int:
    if backlog < max(1, policy.activation_threshold):
        return policy.min_capacity
    wanted = math.ceil(backlog / policy.target_per_worker)
    return max(policy.min_capacity, min(policy.max_capacity, wanted))


def decide(policy: ScalingPolicy, state: ScalingState, backlog: int, now: float) -> Decision:
    """The capacity to ask for now, and the state to remember for the next decision."""
    current = max(policy.min_capacity, min(policy.max_capacity, state.capacity))
    target = target_capacity(policy, backlog)
    if target >= current:
        new_state = replace(state, last_needed_at=now)
        if target > current:
            return Decision(
                target,
                replace(new_state, capacity=target, last_scale_out_at=now),
                f"scale out: backlog {backlog} needs {target} (target {policy.target_per_worker}/worker)",
            )
        return Decision(current, replace(new_state, capacity=current), f"steady: backlog {backlog} fits {current}")
    quiet_since = max(t for t in (state.last_needed_at, state.last_scale_out_at, float("-inf")) if t is not None)
    if now - quiet_since < policy.scale_in_cooldown_s:
        wait = policy.scale_in_cooldown_s - (now - quiet_since)
        return Decision(
            current,
            replace(state, capacity=current),
            f"hold {current}: backlog {backlog} needs {target}, scale-in cooldown {wait:.0f}s left",
        )
    step = policy.scale_in_step or current
    desired = max(target, current - step)
    return Decision(
        desired,
        replace(state, capacity=desired, last_needed_at=now),
        f"scale in: backlog {backlog} needs {target}, cooldown passed",
    )
