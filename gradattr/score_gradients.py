"""The gradient interface a method gets: gradients of the score, and Hessian-vector products.

A :class:`ScoreGradients` is handed to a method (``view.score_gradients``) beside its
:class:`~gradattr.scorer.Scorer`. Every gradient is ``d score_k / d ...`` for all ``K``
targets (negated for ``counterfactual`` calls), from ``torch.autograd.grad`` on tensors of
one forward pass run for the purpose; no parameter ``.grad`` is written:

* :meth:`~ScoreGradients.input_gradients`: with respect to the input (guided backprop);
* :meth:`~ScoreGradients.point_gradients`: with respect to points of the input, or
  replacements of one layer's output (saliency, integrated gradients, SmoothGrad);
* :meth:`~ScoreGradients.layer_gradients`: at the captured feature layer for another pass,
  another score, and the Hessian-vector product (SmoothGrad-CAM++, Finer-CAM, ShapleyCAM);
* :meth:`~ScoreGradients.bias_gradients`: at every bias layer (FullGrad);
* :meth:`~ScoreGradients.attention_gradients`: at every attention call's probabilities
  (Chefer et al.).

It is frozen for the call and holds nothing it computes; the classes it scores are the
scorer's, fixed on the unperturbed input.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from .capture import Capture, Output, capture, per_target_grads, run_hooked, thread_guard
from .errors import GradattrError
from .scorer import Scorer, Site, hooked_output
from .targets import Target

#: Bias layers of FullGrad by default: convolutions and batch norms of any rank.
BIAS_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True, eq=False)
class ScoreGradients:
    """Gradients of the target scores for one call and (optionally) one captured feature layer."""

    scorer: Scorer
    counterfactual: bool = False

    def _score_sign(self, s: torch.Tensor) -> torch.Tensor:
        return -s if self.counterfactual else s

    def input_gradients(self, context=None) -> torch.Tensor:
        """``d score_k / d x`` through the whole network: ``(N, K, C, *S)``.

        ``context`` (e.g. :class:`gradattr.guided.GuidedRectifiers`) is active during
        the forward pass. The input is a private leaf; the network sees a copy of it,
        so in-place operations on the input are allowed.
        """
        sc = self.scorer
        leaf = sc.x.detach().requires_grad_(True)
        out = Output(sc.net, sc.reduction, False, thread_guard())
        with context if context is not None else nullcontext():
            output = run_hooked(sc.call, leaf.clone(), lambda: out.handles, grad=True)
        y, rname = out.finish(output)
        s = sc.call.target.scores(y, leaf.shape[0])
        (g,) = per_target_grads(s, [leaf], self.counterfactual, ["the input"], rname)
        return g

    def point_gradients(self, p: torch.Tensor, rows: torch.Tensor | None = None,
                        layer: Site | None = None, target: Target | None = None,
                        name: str = "the input") -> torch.Tensor:
        """``d score_k / d p`` for every target: ``(B, K, *element)``, one forward pass.

        ``p`` are inputs, or, with ``layer = (name, module)``, replacements of that layer's
        output for the rows' own inputs (``rows``: whose sample each point is); ``target``
        defaults to the scorer's fixed one; ``name`` names ``p`` in errors.
        """
        sc = self.scorer
        target = sc.target if target is None else target
        leaf = p.detach().requires_grad_(True)
        if layer is None:
            y, rname, _ = hooked_output(sc.call, sc.reduction, leaf.clone(), rows, grad=True)
        else:
            x = sc.x if rows is None else sc.x[rows]
            y, rname, _ = hooked_output(sc.call, sc.reduction, x, rows, grad=True, layer=layer,
                                        replace=leaf.clone())
        s = target.scores(y, p.shape[0], rows)
        k = s.shape[1]
        if k == 1 or leaf.device.type != "cpu" or not s.requires_grad:
            (g,) = per_target_grads(s, [leaf], self.counterfactual, [name], rname)
            return g
        # On a CPU one backward per target on the shared graph beats the vectorised backward
        # (one thread, 50 points, K = 10: tiny conv net 576 ms vs 836 ms; ResNet-18 6.0 s vs 6.3 s).
        s = self._score_sign(s)
        gs = [torch.autograd.grad(s[:, j].sum(), leaf, retain_graph=j < k - 1, allow_unused=True)[0]
              for j in range(k)]
        if gs[0] is None:
            per_target_grads(s[:, :1].detach(), [leaf], False, [name], rname)  # raises the error
        return torch.stack(gs, 1)

    def layer_gradients(self, x: torch.Tensor | None = None, score=None, hvp: bool = False):
        """Activations and ``d score_k / d A`` of the scorer's feature layer for another pass.

        ``x`` (default: the call's input) is run through the network with gradients
        (SmoothGrad-CAM++ runs noisy copies); the classes scored are those fixed on the
        unperturbed input (:attr:`Scorer.target`). ``score(y) -> (N, K)`` replaces the
        target's score of the output ``y`` (Finer-CAM scores a difference of logits). With
        ``hvp=True`` the Hessian-vector product ``H_k A = d <d score_k / d A, A> / d A``
        (``A`` held fixed in the inner product; ShapleyCAM's second-order term) is
        returned too, else ``None``. Counterfactual calls negate the score.

        Returns ``(acts (N, C, *s), grads (N, K, C, *s), hv (N, K, C, *s) | None)``.
        """
        sc = self.scorer
        call = sc.call.with_input(sc.x if x is None else x, sc.target)
        cap = capture(call, cast(Capture, sc.cap).plan, grad=True)  # a feature layer was captured
        lp = cap.plan.layers[sc.index]
        leaf = cap.raw[sc.index]
        s = call.target.scores(cap.output, call.n) if score is None else score(cap.output)
        name = f"feature layer {lp.name!r}"
        if not hvp:
            (g,) = per_target_grads(s, [leaf], self.counterfactual, [name], cap.reduction_name)
            hv = None
        else:
            if not s.requires_grad:
                per_target_grads(s, [leaf], False, [name], cap.reduction_name)  # raises the error
            g, hv = _hessian_vector(self._score_sign(s), leaf)

        def ncs(t):
            n, k = t.shape[:2]
            return lp.reading.to_ncs(t.flatten(0, 1)).unflatten(0, (n, k))
        return cap.acts[sc.index], ncs(g), None if hv is None else ncs(hv)

    def bias_gradients(self, types: tuple = ()):
        """FullGrad's pieces: ``d score_k / d x`` and every bias layer's bias and output gradient.

        Bias layers are the modules of ``types`` (default :data:`BIAS_TYPES`) that add a
        bias: a convolution's ``bias``, or a batch norm's effective bias
        ``beta - mu gamma / sqrt(var + eps)`` (its output is ``gamma x / sqrt(var + eps) +
        that``). Every call of such a module is recorded.
        Returns ``(input_grads (N, K, C, *S), [(bias (C_l,), grads (N, K, C_l, *s_l)), ...])``.
        """
        sc = self.scorer
        mine = thread_guard()
        layers = _bias_layers(sc.net, types or BIAS_TYPES)
        leaf = sc.x.detach().requires_grad_(True)
        out = Output(sc.net, sc.reduction, False, mine)
        outs, biases = [], []

        def record(bias):
            def hook(m, i, o):
                if mine() and isinstance(o, torch.Tensor) and o.requires_grad:
                    outs.append(o)
                    biases.append(bias)
                    return o.clone()  # a later in-place op (ReLU) must not change the recorded tensor
                return None
            return hook

        def install():
            return out.handles + [m.register_forward_hook(record(b)) for m, b in layers]
        output = run_hooked(sc.call, leaf.clone(), install, grad=True)
        y, rname = out.finish(output)
        s = sc.call.target.scores(y, leaf.shape[0])
        grads = _grads_allow_unused(s, [leaf] + outs, self.counterfactual, rname)
        return grads[0], [(b, g) for b, g in zip(biases, grads[1:]) if g is not None]

    def attention_gradients(self):
        """The attention probabilities of one forward pass and the score's gradients at them:
        ``(probs [(N, H, L, S)], grads [(N, K, H, L, S)], grid, extra)`` (see
        :func:`gradattr.capture.attention_blocks.observe`); the target as the user gave it."""
        from .capture.attention_blocks import observe

        sc = self.scorer
        cap, grid, extra, y, rname = observe(sc.call, sc.reduction, grad=True)
        s = sc.call.target.scores(y, sc.n)
        return cap.probs, cap.gradients(s, self.counterfactual, rname), grid, extra


def _hessian_vector(s: torch.Tensor, leaf: torch.Tensor):
    """``(d s_k / d A, d <d s_k / d A, A> / d A)`` for every target ``k``, ``(N, K, ...)`` each."""
    gs, hvs = [], []
    for k in range(s.shape[1]):
        (gk,) = torch.autograd.grad(s[:, k].sum(), leaf, retain_graph=True, create_graph=True)
        hk = None
        if gk.requires_grad:
            (hk,) = torch.autograd.grad((gk * leaf.detach()).sum(), leaf, retain_graph=True,
                                        allow_unused=True)
        gs.append(gk.detach())
        hvs.append(torch.zeros_like(gk) if hk is None else hk.detach())
    return torch.stack(gs, 1), torch.stack(hvs, 1)


def _bias_layers(net: nn.Module, types: tuple) -> list:
    """``[(module, bias)]`` of the modules of ``types`` that add a fixed bias."""
    layers = []
    for _, m in net.named_modules():
        if isinstance(m, types) and getattr(m, "bias", None) is not None:
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.running_mean is None:
                    continue  # batch statistics at eval time: no fixed bias
                b = m.bias - m.running_mean * m.weight / torch.sqrt(cast(torch.Tensor, m.running_var) + m.eps)
            else:
                b = m.bias
            layers.append((m, b.detach()))
    return layers


def _grads_allow_unused(s, inputs, counterfactual, reduction_name):
    """``d s[:, k] / d inputs[i]`` as ``(N, K, *input)``; ``None`` for a tensor the score does not
    depend on, except the first (the input), for which that is an error."""
    if not s.requires_grad:
        per_target_grads(s, inputs[:1], counterfactual, ["the input"], reduction_name)  # raises
    s = -s if counterfactual else s
    per_k = [torch.autograd.grad(s[:, k].sum(), inputs, retain_graph=True, allow_unused=True)
             for k in range(s.shape[1])]
    grads = [None if per_k[0][i] is None else torch.stack([g[i] for g in per_k], 1)
             for i in range(len(inputs))]
    if grads[0] is None:
        raise GradattrError(f"target: expected a score that depends on the input, but the score "
                            f"from reduction layer {reduction_name!r} does not depend on it")
    return grads


__all__ = ["ScoreGradients", "BIAS_TYPES"]
