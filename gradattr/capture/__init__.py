"""Hooks and forward passes: which layers to capture (the :class:`Plan`) and capturing them.

``hooks`` runs hooked passes (thread guards, eager hooks, the scored output); ``plans`` holds
:class:`Plan`, :class:`Capture` and the remembered plans; ``passes`` the capture pass;
``layer_choice`` the automatic feature layer; ``gradients`` per-target gradients;
``attention_blocks`` the attention probabilities observed in one pass.
"""
from .gradients import GRADS_BUDGET, per_target_grads, target_chunk
from .hooks import Output, eager, module_named, run_hooked, thread_guard
from .passes import capture
from .plans import PLANS, Capture, LayerPlan, Plan, plan_from_options

__all__ = ["LayerPlan", "Plan", "Capture", "capture", "plan_from_options", "run_hooked",
           "per_target_grads", "target_chunk", "thread_guard", "module_named", "Output", "PLANS",
           "GRADS_BUDGET", "eager"]
