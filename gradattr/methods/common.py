"""What several methods share: the toy network of the examples, the chunking options and the
generator a method draws its random numbers from."""
from __future__ import annotations

import torch

from ..options import Option, flag, optional_positive_int

TOY = """>>> import torch, gradattr
>>> _ = torch.manual_seed(0)
>>> net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.ReLU(),
...                           torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(),
...                           torch.nn.Linear(4, 3))
"""

#: Options of the methods that run chunks of perturbed copies.
BATCH_SIZE = Option("batch_size", None, "int | None",
                    "perturbed copies per forward pass; ``None`` sizes chunks from a 512 MB budget.",
                    optional_positive_int)
PROGRESS = Option("progress", False, "bool", "show a progress bar (tqdm).", flag)


def make_generator(seed: int | None, generator, device) -> torch.Generator | None:
    """The generator a call draws from: ``generator`` as given, a fresh one on ``device`` seeded
    ``seed``, or ``None`` (torch's global random state)."""
    if generator is not None:
        return generator
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)
