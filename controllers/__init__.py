"""Controller policies and the wrappers every policy gets (installed as `cotrain.controllers`).

A policy is a pure `decide(observation, state) -> (action, state)`; the runtime owns the
observe -> decide -> actuate loop and applies `Bounded` around every policy.
"""

from cotrain.controllers.base import Policy
from cotrain.controllers.registry import build_policy, registered_policies

__all__ = ["Policy", "build_policy", "registered_policies"]
