"""A page to look at a dataset run: ``gradattr report OUT_DIR`` / :func:`report`.

:func:`report` reads a folder written by :func:`gradattr.explain_dataset` (its
maps through :func:`gradattr.load_maps`, its method and target from the run's
marker ``.gradattr-run.json``) and writes
``OUT_DIR/report/index.html``: a static page that needs no server and loads
nothing from the network (its CSS and JavaScript are inline, its pictures are
PNG files in ``OUT_DIR/report/img/`` beside it). Open it from the file system.

The page is a grid of cards, one per sample: the input and the map over it
(images), three orthogonal slices (volumes) or the sequence with its
importance (1-D, drawn as inline SVG), with the class, score and probability
where they are known. The cards sort by sample, class, score, probability or
any per-sample metric (``deletion``: lower is more faithful), and filter by
class and by name. A click opens the full-size overlay with the colour scale in
the raw map's own values (its minimum and maximum).

Where the per-sample facts come from:

* the inputs: ``inputs=`` (an array ``(N, C, *S)``, or a data set whose items are
  ``x`` or ``(x, y)``), else the files listed in ``OUT_DIR/inputs.json`` (written
  by ``gradattr explain-dataset``), re-read for the thumbnails; without either,
  the cards show the maps alone;
* class, score, probability and metrics: ``OUT_DIR/samples.jsonl`` when the run
  wrote one (one JSON object per line: ``index``, and any of ``class``,
  ``label``, ``score``, ``probability``, ``metrics`` = ``{name: value}``), and/or
  computed here when ``net=`` is given: one forward pass per batch scores the
  class the run explained (the fingerprint's target: a fixed class, each sample's
  label, or its top class), and ``metrics=["deletion"]`` adds each sample's
  deletion AUC (:func:`gradattr.metrics.deletion`, 20 steps).

Where each part lives: ``build`` (:func:`report` itself), ``run_files`` (the run folder's
files, read and checked), ``samples`` (the inputs and their scores), ``cards`` (each
sample's pictures), ``markup`` (the HTML page).
"""
from .build import METRICS, report  # noqa: F401  (METRICS: the names metrics= takes)
from .markup import metric_token  # noqa: F401  (documented: a metric name as the page spells it)
from .samples import Inputs

__all__ = ["report", "Inputs"]
