"""``gradattr report OUT_DIR``: the static page of an explain-dataset run (:func:`gradattr.report`)."""
from __future__ import annotations

from pathlib import Path

from ..loading.cli_error import CliError
from ..loading.models import load_model
from ..report import report
from .common import MODEL_HELP, PROG, Parser, reporting_errors


def cli_report(argv: list[str]) -> int:
    """``gradattr report OUT_DIR``: write ``OUT_DIR/report/index.html`` for an explain-dataset run.

    With ``--model`` (and the run's ``--size``/``--mean``/``--std``), each card gets
    its class, score and probability, and ``--metrics deletion`` its deletion AUC.
    Returns the exit status.
    """
    p = Parser(prog=f"{PROG} report",
                    description="Write OUT_DIR/report/index.html: a static page (no server, nothing "
                    "from the network) with every sample's map of an explain-dataset run, sortable and "
                    "filterable by class, score, probability and faithfulness.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the --out-dir of a gradattr explain-dataset run")
    p.add_argument("--model", metavar="MODEL", help="the run's model, to score each sample (optional; "
                   + MODEL_HELP + ")")
    p.add_argument("--weights", metavar="FILE", help="state_dict for a factory --model")
    p.add_argument("--random-weights", action="store_true", help="use a factory --model without --weights")
    p.add_argument("--trust-model", action="store_true", help="load a module saved whole with torch.save")
    p.add_argument("--classes", metavar="FILE", help="class names, one per line, in output order")
    p.add_argument("--metrics", metavar="NAMES", help="per-sample faithfulness scores: deletion "
                   "(needs --model)")
    p.add_argument("--input-format", metavar="LETTERS", help="layout of a batch of the run's inputs in MATLAB "
                   "letters for --metrics (e.g. BTC); default: (N, C, *spatial) as explain-dataset reads "
                   "them (BCS, BCSS, BCSSS), so a model without Conv/Pool layers is scored too")
    p.add_argument("--size", metavar="H[,W]", help="as given to explain-dataset")
    p.add_argument("--mean", metavar="M[,M,M]", help="as given to explain-dataset")
    p.add_argument("--std", metavar="S[,S,S]", help="as given to explain-dataset")
    p.add_argument("--gray", action="store_true", help="as given to explain-dataset")
    p.add_argument("--crop", choices=("center", "none"), default="center", help="as given to explain-dataset")
    p.add_argument("--thumb", type=int, default=128, metavar="PX", help="thumbnail size (default 128)")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    args = p.parse_args(argv)
    args.limit = float("inf")

    def run() -> int:
        folder = Path(args.out_dir)
        net = None
        if args.model is not None:
            net = load_model(args.model, args.weights, trust=args.trust_model,
                                 random_weights=args.random_weights).net
        elif args.metrics:
            raise CliError("--metrics: expected --model too (the metrics run the network)")
        page = report(folder, net=net, classes=args.classes,
                      metrics=tuple(m.strip() for m in (args.metrics or "").split(",") if m.strip()),
                      thumb=args.thumb, reading=args, input_format=args.input_format)
        print(page)
        return 0

    return reporting_errors(run, args.debug)
