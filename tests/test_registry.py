"""Tests driven by the method registry: every registered method, swept and checked against its reference.

A method added to the registry is picked up here automatically: it must have a
naive reference in ``references.REFERENCES``, and it is run on 1-D, 2-D and 3-D
toy networks, batched and unbatched, numpy and torch, with every target form it
accepts, through :func:`gradattr.attribute` and through its public function.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import gradattr
from gradattr.options import SHARED
from gradattr.registry import REGISTRY
from references import (BATCH_REFERENCES, CLASS_TARGETS_ONLY, NO_REFERENCE, REFERENCES, SCALAR, SWEEP_OPTIONS,
                        TARGETS, reference_maps, resolve, toy, toy_input)
from expected_warnings import ZERO_MAPS

METHODS = gradattr.list_methods()
SWEPT = [m for m in METHODS if m not in NO_REFERENCE]


def options_for(name: str) -> dict:
    """The layer and upsampling the references use: feature layer "3", maps at its resolution."""
    info = gradattr.method_info(name)
    kw = {}
    if "feature_layer" in info.options:
        kw["feature_layer"] = "3"
    if "upsampling" in info.options:
        kw["upsampling"] = "nearest" if info.returns == "pixels" else "none"
    if "seed" in info.options:
        kw["seed"] = 0
    kw.update(SWEEP_OPTIONS.get(name, {}))
    return kw


def test_every_registered_method_has_a_naive_reference_and_a_public_function():
    missing = [m for m in METHODS if m not in REFERENCES and m not in BATCH_REFERENCES and m not in NO_REFERENCE]
    assert not missing, f"register a naive reference in tests/references.py for {missing}"
    for name in METHODS:
        assert name in gradattr.__all__ and callable(getattr(gradattr, name))


@pytest.mark.parametrize("name", METHODS)
def test_public_signature_and_help_show_every_option(name):
    """The generated function's signature is the entry's: every option, with its default, documented."""
    entry = REGISTRY[name]
    params = inspect.signature(getattr(gradattr, name)).parameters
    head = ["net", "x"] + (["target"] if entry.needs_target else [])
    assert list(params) == head + entry.option_names()
    doc = getattr(gradattr, name).__doc__
    for opt in entry.all_options():
        assert params[opt.name].default == opt.default
        assert f"{opt.name}: " in doc, opt.name
    assert entry.summary.split()[0] in doc
    # options of other kinds are refused rather than ignored
    foreign = next((o for o in SHARED if o not in entry.option_names()), None)
    if foreign is not None:
        with pytest.raises(TypeError, match=foreign):
            getattr(gradattr, name)(toy(2), toy_input(2), **{foreign: SHARED[foreign].default})


def test_positional_options_come_from_the_entry():
    """Only an entry's ``positional`` options are taken by position (grad_cam: MATLAB's order),
    and they must be its leading options: the signature cannot put a keyword-only one first."""
    from gradattr.options import COMMON, TARGET
    from gradattr.registry import Method

    positional = {name: [p for p, v in inspect.signature(getattr(gradattr, name)).parameters.items()
                         if v.kind is v.POSITIONAL_OR_KEYWORD] for name in METHODS}
    assert positional["grad_cam"] == ["net", "x", "target", "reduction_fn", "feature_layer",
                                      "reduction_layer", "upsampling", "device"]
    assert all(p == ["net", "x", "target"][:len(p)] for n, p in positional.items() if n != "grad_cam")
    with pytest.raises(ValueError, match=r"positional must be the first options .*\['reduction_fn'\]"):
        Method("m", "M", lambda v: v, "activations", shared=COMMON + TARGET, positional=("device",))


@ZERO_MAPS
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("name", SWEPT)
def test_every_method_matches_its_naive_reference(name, rank):
    """Every method x rank x batched/unbatched x target form x numpy/torch, against its reference."""
    info = gradattr.method_info(name)
    net, xb = toy(rank), toy_input(rank)
    kw = options_for(name)
    kinds = list(TARGETS) if info.needs_target else [None]
    if name in CLASS_TARGETS_ONLY:
        kinds.remove("callable")
    nonzero = 0
    for batched in (True, False):
        n = 2 if batched else 1
        x = xb if batched else xb[0]
        for kind in kinds:
            target = resolve(kind, n) if kind else None
            ref = reference_maps(name, net, xb[:n], target).float()
            if (kind is None or SCALAR[kind]) and ref.shape[1] == 1:
                ref = ref[:, 0]
            if not batched:
                ref = ref[0]
            args = (target,) if info.needs_target else ()
            got = gradattr.attribute(net, x, *args, method=name, **kw)
            tol = dict(rtol=1e-5, atol=1e-6 * float(ref.abs().max()) + 1e-12)
            torch.testing.assert_close(got, ref, **tol, msg=f"{name} rank {rank} {kind} batched={batched}")
            nonzero += int(ref.abs().sum() > 0)
        # numpy in, numpy out, through the public function
        target = resolve(kinds[0], n) if kinds[0] else None
        args = (target,) if info.needs_target else ()
        arr = getattr(gradattr, name)(net, x.numpy(), *args, **kw)
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float32
        np.testing.assert_allclose(arr, gradattr.attribute(net, x, *args, method=name, **kw).numpy(),
                                   rtol=1e-6, atol=1e-7)
    assert nonzero >= 2  # the comparisons compare something
