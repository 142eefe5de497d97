"""The perturbation interface methods use: score modified inputs or modified activations.

A :class:`Probe` is handed to a method with what was captured for one feature
layer. It runs extra forward passes without gradients: :meth:`Probe.score_inputs`
scores masked inputs (Score-CAM, RISE...), :meth:`Probe.score_activations`
scores copies of one sample's feature map with something changed (Ablation-CAM),
putting them back into the network's own layout through the layer's reading.
It also sizes chunks from a memory budget and shows progress.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext

import torch

from . import resize
from .capture import Capture, per_target_grads, run_hooked
from .errors import GradattrError, expected
from .prep import Call

#: Memory that one chunk of perturbed copies may use when ``batch_size=None``.
MEMORY_BUDGET = 512 * 2**20
#: Bytes a forward pass is assumed to need per copy, as a multiple of the bytes of the
#: tensor that is copied (the masked input): the copy itself plus the network's
#: intermediate activations, which for CNNs are a few times larger.
FORWARD_FACTOR = 16
#: The same when only the layers after the feature layer run on the copies: the
#: modified copies, the hook's clone, and the tail's activations.
TAIL_FACTOR = 3
#: Give 2-D masked inputs to the network in channels_last memory format (convolutions then
#: run channels_last throughout). Off: on a CPU it gained nothing measurable for Score-CAM on
#: ResNet-18 (benchmarks/bench_perturbation.py); kept as a switch for GPU measurements.
CHANNELS_LAST = False
#: At most this many copies per forward pass on a CPU when ``batch_size=None`` (the memory
#: budget still applies). Score-CAM on ResNet-18 (112 px, one loaded 2-core run): 64 copies
#: per pass took 0.73 of the time of 16 (benchmarks/bench_perturbation.py).
CPU_CHUNK = 64


def chunk_size(batch_size: int | None, per_copy: torch.Tensor, cpu_cap: bool = True,
               factor: int = FORWARD_FACTOR) -> int:
    """Copies per forward pass: ``batch_size``, or as many as fit :data:`MEMORY_BUDGET`."""
    if batch_size is not None:
        return batch_size
    per = per_copy.numel() * per_copy.element_size() * factor
    fit = max(1, MEMORY_BUDGET // max(per, 1))
    return min(fit, CPU_CHUNK) if cpu_cap and per_copy.device.type == "cpu" else fit


class Progress:
    """A tqdm bar when asked for (and installed), else a counter that prints only when asked."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar, self.n, self.total, self.enabled, self.desc = None, 0, total, enabled, desc
        if enabled:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, desc=desc)
            except ImportError:
                pass

    def update(self, k: int) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
        elif self.enabled:
            print(f"\r{self.desc}: {self.n}/{self.total}", end="", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


class Probe:
    """Extra forward passes for one call and (optionally) one captured feature layer."""

    def __init__(self, call: Call, cap: Capture | None = None, index: int = 0, *,
                 counterfactual: bool = False, upsampling: str = "bicubic"):
        self.call, self.cap, self.index = call, cap, index
        self.x, self.n, self.net = call.x, call.n, call.net
        self.output = None if cap is None else cap.output
        self.counterfactual, self.upsampling = counterfactual, upsampling
        self.reduction_name = "output" if cap is None else cap.reduction_name
        self._target = None
        self._fast: bool | None = None  # may only the layers after the feature layer run on copies?

    # -- what is scored -------------------------------------------------------------------
    @property
    def target(self):
        """The target with each sample's classes fixed on the unperturbed input."""
        if self._target is None:
            y = self.output
            if y is None:
                y = self.output_of(self.x)
            self._target = self.call.target.fixed(y, self.n)
        return self._target

    @property
    def scores(self) -> torch.Tensor:
        """``(N, K)`` target scores of the unperturbed input."""
        y = self.output if self.output is not None else self.output_of(self.x)
        return self.call.target.scores(y, self.n).detach()

    # -- forward passes -------------------------------------------------------------------
    def output_of(self, x: torch.Tensor, replace=None, rows: torch.Tensor | None = None):
        """The scored output of a no-grad forward pass of ``x``.

        ``replace(o)`` substitutes the captured call of this probe's feature layer.
        """
        from .capture import _Output, _mine, _module

        mine = _mine()
        out = _Output(self.net, None if self.cap is None else self.cap.plan.reduction, False, mine)
        count = [0]

        def install():
            if replace is None:
                return out.handles
            lp = self.cap.plan.layers[self.index]

            def swap(m, i, o):
                if not mine():
                    return None
                k = count[0]
                count[0] += 1
                return replace(o) if k == lp.call else None
            return out.handles + [_module(self.net, lp.name).register_forward_hook(swap)]

        return out.finish(run_hooked(self.call, x, install, grad=False, rows=rows))[0]

    def score_inputs(self, x: torch.Tensor, rows: torch.Tensor, softmax: bool = False) -> torch.Tensor:
        """Scores ``(B, K)`` of inputs ``x (B or 1, C, *S)``; ``rows`` says whose target each uses.

        An ``x`` of batch 1 with several ``rows`` is run once and its output shared.
        The pass runs under ``torch.inference_mode`` (no autograd bookkeeping at all);
        the scores come back as ordinary tensors. ``softmax=True`` scores the softmax
        over the output's class axis (axis 1) instead of the raw output: the
        probabilities RISE and Group-CAM use.
        """
        target = self.target  # fixed on the unperturbed input, outside inference mode
        with torch.inference_mode():
            if (self.call.inputs or self.call.forward_kwargs) and x.shape[0] == 1 < len(rows):
                x = x.expand(len(rows), *x.shape[1:])  # one row per sample: the other inputs differ
            y = self.output_of(x, rows=rows if x.shape[0] == len(rows) else None)
            if softmax and isinstance(y, torch.Tensor) and y.ndim >= 2:
                y = torch.softmax(y.float() if y.dtype in (torch.float16, torch.bfloat16) else y, 1)
            if isinstance(y, torch.Tensor) and y.shape[0] == 1 and len(rows) > 1:
                y = y.expand(len(rows), *y.shape[1:])
            s = target.scores(y, len(rows), rows)
        return s.clone()

    def score_masked(self, count: int, make, rows: torch.Tensor, *, batch_size: int | None = None,
                     progress: bool = False, desc: str = "", softmax: bool = False) -> torch.Tensor:
        """Scores ``(count, K)`` of ``count`` perturbed inputs, built and run one chunk at a time.

        The shared primitive of the masked-input methods (Score-CAM, SS-CAM, IS-CAM,
        Group-CAM, RISE). ``make(start, stop)`` returns the perturbed inputs
        ``start..stop-1`` as ``(stop - start, C, *S)``; ``rows (count,)`` says whose
        target each is scored for. Chunks hold ``batch_size`` inputs, or as many as fit
        :data:`MEMORY_BUDGET` (at most :data:`CPU_CHUNK` on a CPU), so the
        ``count x input`` tensor is never built; the passes run under
        ``torch.inference_mode``; ``progress`` shows a bar over the ``count`` inputs.
        The result does not depend on the chunk size as long as ``make`` does not.
        """
        step = chunk_size(batch_size, self.x[0])
        out = None
        bar = self.progress(count, progress, desc)
        try:
            for start in range(0, count, step):
                stop = min(count, start + step)
                xb = make(start, stop)
                if CHANNELS_LAST and xb.ndim == 4:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                s = self.score_inputs(xb, rows[start:stop], softmax)
                if out is None:
                    out = s.new_empty(count, s.shape[1])
                out[start:stop] = s
                bar.update(stop - start)
        finally:
            bar.close()
        if out is None:
            out = self.scores.new_zeros(0, self.scores.shape[1])
        return out

    def activation_chunk(self, batch_size: int | None) -> int:
        """Copies per :meth:`score_activations` call, for the path that will run them."""
        if self._fast is False:
            return chunk_size(batch_size, self.x[0])
        return chunk_size(batch_size, self.cap.acts[self.index][0], cpu_cap=False, factor=TAIL_FACTOR)

    def score_activations(self, copies: torch.Tensor, i: int) -> torch.Tensor:
        """Scores ``(B, K)`` of sample ``i`` with its feature map replaced by ``copies (B, C, *s)``.

        Fast path (used when the network allows it): the network runs on sample
        ``i`` alone and the feature layer's output is replaced by the batch of
        copies, so only the layers after it run on the copies. Networks whose tail
        reads the batch size from the input (EfficientNet-Lite's ``x.view(bs, -1)``)
        break this: the first call therefore adds one unchanged copy and keeps the
        path only if the output has one row per copy and that copy reproduces the
        original score. Otherwise each copy runs the whole network.
        """
        if self._fast is not False:
            s, ok = self._tail_scores(copies, i, probe=self._fast is None)
            self._fast = ok if self._fast is None else self._fast
            if ok:
                return s
        step = chunk_size(None, self.x[0])
        return torch.cat([self._full_scores(copies[j:j + step], i) for j in range(0, len(copies), step)])

    def _layer_raw(self, i: int, b: int) -> torch.Tensor:
        raw = self.cap.raw[self.index].detach()
        return raw[i:i + 1].expand(b, *raw.shape[1:])

    def _tail_scores(self, copies: torch.Tensor, i: int, probe: bool):
        reading = self.cap.plan.layers[self.index].reading
        if probe:
            copies = torch.cat([self.cap.acts[self.index][i:i + 1], copies])
        b = copies.shape[0]
        rows = torch.full((b,), i, device=copies.device)
        raw = reading.from_ncs(copies, self._layer_raw(i, b))
        try:
            y = self.output_of(self.x[i:i + 1], replace=lambda o: raw, rows=rows[:1])
            if isinstance(y, torch.Tensor) and y.shape[0] != b:
                raise GradattrError(f"net: expected an output with one row per copy ({b}) when only "
                                    f"the layers after the feature layer run on the copies, got "
                                    f"{y.shape[0]} rows; the network reads its batch size from its input")
            s = self.target.scores(y, b, rows).detach()
        except (RuntimeError, GradattrError):
            if probe:
                return None, False
            raise
        if probe:
            y_i = self.scores[i]
            scale = float(y_i.abs().max().clamp(min=1))
            if not torch.allclose(s[0], y_i.to(s.dtype), rtol=1e-4, atol=1e-4 * scale):
                return None, False
            s = s[1:]
        return s, True

    def _full_scores(self, copies: torch.Tensor, i: int) -> torch.Tensor:
        b = copies.shape[0]
        reading = self.cap.plan.layers[self.index].reading
        rows = torch.full((b,), i, device=copies.device)
        x = self.x[i:i + 1].expand(b, *self.x.shape[1:]).contiguous()
        y = self.output_of(x, replace=lambda o: reading.from_ncs(copies.to(o.dtype), o), rows=rows)
        return self.target.scores(y, b, rows).detach()

    # -- gradients with respect to the input and resizing ---------------------------------
    def input_gradients(self, context=None) -> torch.Tensor:
        """``d score_k / d x`` through the whole network: ``(N, K, C, *S)``.

        ``context`` (e.g. :class:`gradattr.guided.GuidedRectifiers`) is active during
        the forward pass. The input is a private leaf; the network sees a copy of it,
        so in-place operations on the input are allowed. No parameter ``.grad`` is written.
        """
        from .capture import _Output, _mine

        leaf = self.x.detach().requires_grad_(True)
        out = _Output(self.net, None if self.cap is None else self.cap.plan.reduction, True, _mine())
        with context if context is not None else nullcontext():
            output = run_hooked(self.call, leaf.clone(), lambda: out.handles, grad=True)
        y, self.reduction_name = out.finish(output)
        s = self.call.target.scores(y, leaf.shape[0])
        (g,) = per_target_grads(s, [leaf], self.counterfactual, ["the input"], self.reduction_name)
        return g

    def layer_gradients(self, x: torch.Tensor | None = None, score=None, hvp: bool = False):
        """Activations and ``d score_k / d A`` of this probe's feature layer for another pass.

        ``x`` (default: the call's input) is run through the network with gradients
        (SmoothGrad-CAM++ runs noisy copies); the classes scored are those fixed on the
        unperturbed input (:attr:`target`). ``score(y) -> (N, K)`` replaces the target's
        score of the output ``y`` (Finer-CAM scores a difference of logits). With
        ``hvp=True`` the Hessian-vector product ``H_k A = d <d score_k / d A, A> / d A``
        (``A`` held fixed in the inner product; ShapleyCAM's second-order term) is
        returned too, else ``None``. Counterfactual calls negate the score.

        Returns ``(acts (N, C, *s), grads (N, K, C, *s), hv (N, K, C, *s) | None)``.
        """
        from .capture import capture

        call = self.call.with_input(self.x if x is None else x, self.target)
        cap = capture(call, self.cap.plan, grad=True)
        lp = cap.plan.layers[self.index]
        leaf = cap.raw[self.index]
        s = call.target.scores(cap.output, call.n) if score is None else score(cap.output)
        name = f"feature layer {lp.name!r}"
        if not hvp:
            (g,) = per_target_grads(s, [leaf], self.counterfactual, [name], cap.reduction_name)
            hv = None
        else:
            if not s.requires_grad:
                per_target_grads(s, [leaf], False, [name], cap.reduction_name)  # raises the error
            s = -s if self.counterfactual else s
            gs, hvs = [], []
            for k in range(s.shape[1]):
                (gk,) = torch.autograd.grad(s[:, k].sum(), leaf, retain_graph=True, create_graph=True)
                hk = None
                if gk.requires_grad:
                    (hk,) = torch.autograd.grad((gk * leaf.detach()).sum(), leaf, retain_graph=True,
                                                allow_unused=True)
                gs.append(gk.detach())
                hvs.append(torch.zeros_like(gk) if hk is None else hk.detach())
            g, hv = torch.stack(gs, 1), torch.stack(hvs, 1)

        def ncs(t):
            n, k = t.shape[:2]
            return lp.reading.to_ncs(t.flatten(0, 1)).unflatten(0, (n, k))
        return cap.acts[self.index], ncs(g), None if hv is None else ncs(hv)

    def bias_gradients(self, types: tuple = ()):
        """FullGrad's pieces: ``d score_k / d x`` and every bias layer's bias and output gradient.

        Bias layers are the modules of ``types`` (default: convolutions and batch norms
        of any rank) that add a bias: a convolution's ``bias``, or a batch norm's
        effective bias ``beta - mu gamma / sqrt(var + eps)`` (its output is
        ``gamma x / sqrt(var + eps) + that``). Every call of such a module is recorded.
        Returns ``(input_grads (N, K, C, *S), [(bias (C_l,), grads (N, K, C_l, *s_l)), ...])``.
        """
        from torch import nn

        from .capture import _Output, _mine

        types = types or (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
        mine = _mine()
        layers, outs = [], []
        for _, m in self.net.named_modules():
            if isinstance(m, types) and getattr(m, "bias", None) is not None:
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    if m.running_mean is None:
                        continue  # batch statistics at eval time: no fixed bias
                    b = m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)
                else:
                    b = m.bias
                layers.append((m, b.detach()))
        leaf = self.x.detach().requires_grad_(True)
        out = _Output(self.net, None if self.cap is None else self.cap.plan.reduction, False, mine)
        biases = []

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
        output = run_hooked(self.call, leaf.clone(), install, grad=True)
        y, self.reduction_name = out.finish(output)
        s = self.call.target.scores(y, leaf.shape[0])
        grads = _grads_allow_unused(s, [leaf] + outs, self.counterfactual, self.reduction_name)
        return grads[0], [(b, g) for b, g in zip(biases, grads[1:]) if g is not None]

    def to_input(self, maps: torch.Tensor) -> torch.Tensor:
        """``maps (N, K, *s)`` resized to the input's size with the call's upsampling."""
        if self.upsampling == "none":
            raise expected("upsampling", "'bicubic' or 'nearest' (this method needs the map at the "
                           "input's resolution)", "'none'")
        return resize.imresize(maps, tuple(self.x.shape[2:]), self.upsampling)

    def progress(self, total: int, enabled: bool, desc: str) -> Progress:
        return Progress(total, enabled, desc)


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
