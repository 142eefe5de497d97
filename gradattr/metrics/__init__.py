"""How good is a map? Faithfulness and localisation metrics for any rank.

Every function works on sequences ``(N, C, T)``, images ``(N, C, H, W)`` and
volumes ``(N, C, D, H, W)`` through one code path (``n, c, *s = x.shape``),
batched, on the device of the computation; the network is run in eval mode
under ``torch.no_grad()`` and left exactly as found (training flags, device,
``requires_grad``, ``.grad``; no hooks are used).

Faithfulness (they run the network on perturbed copies of ``x``):

* :func:`deletion` / :func:`insertion` -- RISE (Petsiuk et al., BMVC 2018):
  the target score while the most important elements are removed (replaced by
  a baseline) or inserted (into the baseline), and the area under that curve.
* :func:`confidence_change`, :func:`average_drop`, :func:`increase_in_confidence`
  -- Grad-CAM++ (Chattopadhay et al., WACV 2018): the score of ``x * map``.
* :func:`road` -- ROAD (Rong et al., ICML 2022): remove the most or least
  relevant fraction and fill it by noisy linear imputation (:func:`impute`).

Localisation (maps only, no network):

* :func:`pointing_game` (Zhang et al., ECCV 2016) and
  :func:`energy_pointing_game` (Wang et al., Score-CAM, CVPRW 2020) against a
  mask or a box;
* :func:`localize` -- the CAM paper's weakly supervised localisation (Zhou et
  al., CVPR 2016): threshold, largest connected component, bounding box, IoU.

Sanity checks, robustness and concentration: :func:`randomization_check` (Adebayo et al.,
NeurIPS 2018), :func:`max_sensitivity` and :func:`infidelity` (Yeh et al., NeurIPS 2019),
:func:`sparseness` (Chalasani et al., ICML 2020), :func:`relevance_mass` and
:func:`relevance_rank` (Arras et al., 2022).

Where the code lives: ``faithfulness`` (deletion, insertion, the confidence metrics),
``road_metric`` (ROAD and its imputation), ``localisation`` (pointing games, CAM boxes, relevance
mass and rank), ``randomization``, ``robustness`` (max-sensitivity, infidelity),
``complexity`` (sparseness); ``scoring`` and ``method_runs`` hold what the network metrics
and the method-running checks share; ``registry`` has one :class:`~.registry.Metric` entry per
metric, which :func:`gradattr.compare` reads.

Conventions shared by the network metrics:

* ``maps`` come as :func:`gradattr.grad_cam` returns them for ``x``: ``(N, *s)``
  (or ``(*s)`` for an unbatched ``x``), or ``(N, K, *s)`` for K targets per
  sample. Their spatial size must be ``x``'s (use ``upsampling="bicubic"``).
* ``x`` may be a tuple of inputs run as ``net(*x)``, with ``forward_kwargs`` (keyword
  inputs) and ``explain`` (the index of the input the maps explain), as for the
  attribution methods: only ``x[explain]`` is perturbed, and the other inputs and the
  batched keyword inputs follow each perturbed copy's sample.
* ``target`` takes everything ``grad_cam`` takes (``None`` is each sample's top
  class on the unperturbed input, kept fixed for all perturbed copies).
* Scores are softmax probabilities of the target class (``softmax=True``, as in
  the papers) or raw outputs (``softmax=False``); a ``reduction_fn`` (or callable
  target) always gets the raw output.
* Results come back in ``x``'s form: tensors on ``x``'s device (numpy for numpy
  ``x``), ``N`` dropped for unbatched ``x`` and ``K`` dropped when ``maps`` had no
  ``K`` axis.

Boxes, for every rank, are ``(d, 2)`` integer arrays of half-open ``[start, stop)``
index intervals in array-axis order -- ``[[row0, row1], [col0, col1]]`` for an
image, ``[[t0, t1]]`` for a sequence, ``[[z0, z1], [row0, row1], [col0, col1]]``
for a volume -- or ``(N, d, 2)`` for one box per sample. A torchvision/Pascal
``(x1, y1, x2, y2)`` box is ``[[y1, y2], [x1, x2]]``.
"""
from __future__ import annotations
from .complexity import sparseness
from .faithfulness import (ConfidenceChange, Curve, average_drop, blur, confidence_change, deletion,
                           increase_in_confidence, insertion)
from .localisation import (Localization, box_iou, energy_pointing_game, localize, pointing_game, relevance_mass,
                           relevance_rank)
from .randomization import randomizable_layers, randomization_check
from .road_metric import Road, impute, road
from .robustness import infidelity, max_sensitivity

__all__ = [
    "Curve", "deletion", "insertion", "blur",
    "ConfidenceChange", "confidence_change", "average_drop", "increase_in_confidence",
    "Road", "road", "impute",
    "pointing_game", "energy_pointing_game", "Localization", "localize", "box_iou",
    "randomization_check", "randomizable_layers", "max_sensitivity", "infidelity", "sparseness",
    "relevance_mass", "relevance_rank",
]
