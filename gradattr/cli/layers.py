"""``gradattr layers``: the candidate feature layers of a model and their output shapes."""
from __future__ import annotations

import fnmatch

from ..errors import GradattrError
from ..loading.cli_error import CliError, one_line
from ..loading.input_files import parse_ints
from ..loading.models import load_model


# -- layers ---------------------------------------------------------------------------
def _matches(pattern: str, *texts: str) -> bool:
    p = pattern.casefold()
    if any(ch in p for ch in "*?["):
        return any(fnmatch.fnmatchcase(t.casefold(), p) for t in texts)
    return any(p in t.casefold() for t in texts)


def cmd_layers(args) -> int:
    """``gradattr layers``: run the model on zeros of ``--input-shape`` and list its layers."""
    import torch

    shape = parse_ints(args.input_shape, "--input-shape")
    if len(shape) < 3:
        raise CliError(f"--input-shape: expected N,C and 1 to 3 spatial sizes, e.g. 1,3,224,224, got "
                       f"{args.input_shape!r}")
    loaded = load_model(args.model, args.weights, trust=args.trust_model, random_weights=args.random_weights)
    x = torch.zeros(shape)
    n, spatial = shape[0], tuple(shape[2:])
    seen = _outputs(loaded, x)
    chosen, auto = _automatic(loaded.net, x)
    rows = sorted(((o, nm, t, s, r) for nm, (o, t, s, r) in seen.items()), key=lambda r: r[0])
    if not args.all:
        rows = [r for r in rows if r[4] is not None]
    if not rows:
        raise CliError(f"--input-shape: no layer outputs the input's layout ({n}, C, {len(spatial)} "
                       "spatial dims); --all lists every layer")
    if args.filter is not None:
        total = len(rows)
        rows = [r for r in rows if _matches(args.filter, r[1], r[2])]
        if not rows:
            raise CliError(f"--filter: expected a part of a layer name or type (or a glob such as "
                           f"'*conv*'), got {args.filter!r}, which matches none of the {total} layers")
    table = [("name", "type", "output shape", "reading")]
    table += [(nm, t, str(s), r if r is not None else "-") for _, nm, t, s, r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    print(auto)
    for k, row in enumerate(table):
        mark = " " if k == 0 or row[0] != chosen else "*"
        print(f"{mark} " + "  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + f"  {row[3]}")
    print(f"{len(rows)} layers" + (f" matching {args.filter!r}" if args.filter is not None else "")
          + ("" if args.all else " whose output has the input's layout (--all lists every layer)"))
    return 0


def _outputs(loaded, x) -> dict[str, tuple]:
    """``{name: (call order, type, output shape, reading or None)}`` of every module's output in
    one pass of ``x`` (eval mode, restored after), read on the grids the pass shows."""
    import torch

    from ..geometry import Observer
    from ..layout_inference import infer_reading
    from ..prep import borrowed

    net = loaded.net
    n, spatial = x.shape[0], tuple(x.shape[2:])
    seen: dict[str, tuple] = {}
    calls = [0]
    observer = Observer(net, n, spatial, lambda: True)

    def hook_for(name):
        def hook(module, inputs, out):
            calls[0] += 1
            if isinstance(out, torch.Tensor):
                reading = infer_reading(out, n, spatial, None, observer, observer.tick())
                seen[name] = (calls[0], loaded.types.get(name, type(module).__name__), tuple(out.shape),
                              None if reading is None else (reading.description or reading.kind))
        return hook

    handles = []
    try:
        with borrowed(net), torch.no_grad():  # eval mode, restored after
            handles += observer.handles()  # the grids the pass shows (token readings need them)
            for name, module in net.named_modules():
                if name:
                    handles.append(module.register_forward_hook(hook_for(name)))
            with observer.watching():
                net(x)
    except Exception as err:  # noqa: BLE001
        raise CliError(f"--input-shape: the model does not run on an input of shape {tuple(x.shape)}: "
                       f"{one_line(err)}") from None
    finally:
        for h in handles:
            h.remove()
    return seen


def _automatic(net, x):
    """``(name or None, the line that says it)``: the layer grad_cam picks by itself."""
    from .. import grad_cam

    try:
        _, chosen, reduction = grad_cam(net, x, return_layers=True, upsampling="none",
                                        input_format="BC" + "S" * (x.ndim - 2))
        return chosen, (f"automatic feature layer: {chosen!r} (* below; what grad_cam uses when no "
                        f"--feature-layer is given), scores from {reduction!r}")
    except GradattrError as err:
        return None, f"automatic feature layer: none ({one_line(err)})"
