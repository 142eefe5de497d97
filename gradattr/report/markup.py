"""The report's HTML page: the header, the cards, the sort and filter controls, and its inline CSS and
JavaScript (nothing loaded from the network).
"""
from __future__ import annotations

import html
import re

from .cards import jet_colors


def _fmt(v, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}g}"


def metric_token(name: str) -> str:
    """The token a metric's name becomes in the page's attribute names and sort keys: the name itself
    when it is lower-case letters and digits starting with a letter (``deletion``), else ``_`` and
    the hex digits of its UTF-8 bytes (``"a b"`` -> ``_612062``), so that no name can end an
    attribute, add one, or meet another name's token.

    >>> metric_token("deletion"), metric_token("a b"), metric_token('x" onerror="y')
    ('deletion', '_612062', '_7822206f6e6572726f723d2279')
    """
    return name if re.fullmatch(r"[a-z][a-z0-9]*", name) else "_" + name.encode("utf-8").hex()


def explained(target) -> str:
    """What a run explained, in words, from its fingerprint's target (the header says it).

    >>> explained(None), explained("label"), explained(3), explained([1, 2])
    ("each sample's top class", "each sample's label", 'class 3', 'target [1, 2]')
    """
    if target is None:
        return "each sample's top class"
    if isinstance(target, str) and target == "label":
        return "each sample's label"
    if isinstance(target, int) and not isinstance(target, bool):
        return f"class {target}"
    return f"target {target}"


def page_html(heading: str, cards: list[dict], run: dict, rank: int, metric_names: list[str]) -> str:
    e = html.escape  # quote=True: escapes & < > " ', for text and for quoted attribute values alike
    jet = jet_colors()
    gradient = ", ".join(f"rgb{jet[k]}" for k in range(0, 256, 32)) + f", rgb{jet[255]}"
    classes = sorted({(c.get("class"), c["class_name"]) for c in cards if c.get("class") is not None},
                     key=lambda t: (str(type(t[0])), t[0]))
    keys = [("index", "sample"), ("class", "class"), ("score", "score"), ("probability", "probability")] + \
        [(f"metric-{metric_token(m)}", m + (" (lower: more faithful)" if m == "deletion" else ""))
         for m in metric_names]
    options = "".join(f'<option value="{e(k)}:{d}">{e(label)} {"↑" if d == "asc" else "↓"}</option>'
                      for k, label in keys for d in ("asc", "desc"))
    class_options = '<option value="">all classes</option>' + "".join(
        f'<option value="{e(str(c))}">{e(str(c))}{": " + e(n) if n and n != str(c) else ""}</option>'
        for c, n in classes)
    body = []
    for c in cards:
        data = {"index": c["index"], "class": c.get("class", ""), "score": _fmt(c.get("score"), 17),
                "probability": _fmt(c.get("probability"), 17), "name": c["name"], "min": repr(c["min"]),
                "max": repr(c["max"]), "full": c.get("full", ""), "label": c.get("label", ""),
                "class-name": c["class_name"]}
        data.update({f"metric-{metric_token(m)}": repr(v) for m, v in c["metrics"].items()})
        attrs = " ".join(f'data-{k}="{e(str(v))}"' for k, v in data.items())
        facts = []
        if c.get("class") is not None:
            facts.append(f'<span class="cls">{e(str(c["class"]))}{" " + e(c["class_name"]) if c["class_name"] and c["class_name"] != str(c["class"]) else ""}</span>')
        if c.get("label") not in (None, ""):
            facts.append(f'<span>label {e(str(c["label"]))}</span>')
        if c.get("score") is not None:
            facts.append(f'<span>score {_fmt(c["score"])}</span>')
        if c.get("probability") is not None:
            facts.append(f'<span>p = {c["probability"]:.3f}</span>')
        facts += [f'<span>{e(m)} {_fmt(v, 3)}</span>' for m, v in c["metrics"].items()]
        if rank == 1:
            pics = f'<div class="svg">{c["svg"]}</div><template class="big">{c["svg_full"]}</template>'
        else:
            pics = "".join(f'<img src="{e(c[k])}" alt="{k} of {e(c["name"])}" loading="lazy">'
                           for k in ("input", "overlay") if k in c)
        body.append(f'<div class="card" id="card-{int(c["index"])}" tabindex="0" {attrs}>'
                    f'<div class="pics">{pics}</div><div class="name">{e(c["name"])}</div>'
                    f'<div class="facts">{" ".join(facts)}</div></div>')
    options_text = ", ".join(f"{k}={v}" for k, v in (run.get("options") or {}).items())
    what = ", ".join([f'method {e(str(run.get("method", "?")))}']
                     + ([f"explaining {e(explained(run['target']))}"] if "target" in run else [])
                     + ([e(options_text)] if options_text else []))
    kind = {1: "sequences", 2: "images", 3: "volumes (slices through each map's maximum)"}[rank]
    return _PAGE.format(title=e(heading), what=what, n=len(cards), kind=kind, options=options,
                        class_options=class_options, cards="\n".join(body), gradient=gradient,
                        script=_SCRIPT)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f4f4f4; color: #222; }}
header {{ position: sticky; top: 0; background: #fff; padding: 8px 16px; border-bottom: 1px solid #ccc; z-index: 1; }}
header h1 {{ font-size: 18px; margin: 0 0 4px; }}
header .run {{ color: #555; font-size: 12px; }}
.controls {{ display: flex; gap: 12px; align-items: center; flex-wrap: wrap; margin-top: 6px; }}
#grid {{ display: flex; flex-wrap: wrap; gap: 10px; padding: 12px 16px; }}
.card {{ background: #fff; border: 1px solid #ccc; border-radius: 6px; padding: 6px; cursor: pointer; width: min-content; }}
.card:hover, .card:focus {{ border-color: #1f77b4; outline: none; box-shadow: 0 0 0 2px #1f77b455; }}
.card .pics {{ display: flex; gap: 4px; }}
.card img {{ display: block; image-rendering: pixelated; max-width: 256px; }}
.card .name {{ font-size: 12px; color: #555; margin-top: 4px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }}
.card .facts span {{ display: inline-block; font-size: 12px; margin-right: 6px; white-space: nowrap; }}
.card .facts .cls {{ font-weight: 600; }}
#detail {{ position: fixed; inset: 0; background: #000a; display: flex; align-items: center; justify-content: center; z-index: 2; }}
#detail[hidden] {{ display: none; }}
#detail .box {{ background: #fff; padding: 16px; border-radius: 8px; max-width: 95vw; max-height: 95vh; overflow: auto; }}
#detail img {{ image-rendering: pixelated; max-width: 90vw; max-height: 75vh; display: block; }}
.scale {{ display: flex; align-items: center; gap: 8px; margin-top: 8px; font-size: 12px; }}
.scale .bar {{ width: 260px; height: 14px; background: linear-gradient(to right, {gradient}); border: 1px solid #888; }}
</style></head>
<body>
<header><h1>{title}</h1>
<div class="run">{n} {kind}; {what}. Click a card for the full-size map.</div>
<div class="controls">
<label>sort by <select id="sort">{options}</select></label>
<label>class <select id="class-filter">{class_options}</select></label>
<label>name <input id="name-filter" type="search" placeholder="part of a file name"></label>
<span id="shown"></span>
</div></header>
<main id="grid">
{cards}
</main>
<div id="detail" hidden><div class="box">
<div id="detail-title"></div>
<div id="detail-picture"></div>
<div class="scale"><span id="scale-min"></span><div class="bar"></div><span id="scale-max"></span>
<span>(the map's raw values: its minimum to its maximum)</span></div>
<p><button id="close">close (Esc)</button></p>
</div></div>
<script>{script}</script>
</body></html>
"""

_SCRIPT = r"""
(function () {
  const grid = document.getElementById('grid');
  const cards = Array.from(grid.querySelectorAll('.card'));
  const sort = document.getElementById('sort');
  const byClass = document.getElementById('class-filter');
  const byName = document.getElementById('name-filter');
  const shown = document.getElementById('shown');
  const detail = document.getElementById('detail');
  function value(card, key) {
    const v = card.getAttribute('data-' + key);
    if (v === null) return null;
    if (v === undefined || v === '') return null;
    const f = parseFloat(v);
    return isNaN(f) ? v : f;
  }
  function apply() {
    const [key, dir] = sort.value.split(':');
    const sign = dir === 'desc' ? -1 : 1;
    const sorted = cards.slice().sort((a, b) => {
      const va = value(a, key), vb = value(b, key);
      if (va === null && vb === null) return value(a, 'index') - value(b, 'index');
      if (va === null) return 1;
      if (vb === null) return -1;
      if (va < vb) return -sign;
      if (va > vb) return sign;
      return value(a, 'index') - value(b, 'index');
    });
    const cls = byClass.value, name = byName.value.toLowerCase();
    let n = 0;
    for (const card of sorted) {
      const ok = (cls === '' || card.dataset.class === cls) &&
                 (name === '' || card.dataset.name.toLowerCase().includes(name));
      card.hidden = !ok;
      n += ok ? 1 : 0;
      grid.appendChild(card);
    }
    shown.textContent = n + ' of ' + cards.length + ' shown';
  }
  function open(card) {
    const pic = document.getElementById('detail-picture');
    pic.innerHTML = '';
    const big = card.querySelector('template.big');
    if (big) {
      pic.appendChild(big.content.cloneNode(true));
    } else {
      const img = document.createElement('img');
      img.src = card.dataset.full;
      img.alt = 'full-size map of ' + card.dataset.name;
      pic.appendChild(img);
    }
    const facts = card.querySelector('.facts').textContent;
    document.getElementById('detail-title').textContent = card.dataset.name + (facts ? ': ' + facts : '');
    document.getElementById('scale-min').textContent = Number(card.dataset.min).toPrecision(4);
    document.getElementById('scale-max').textContent = Number(card.dataset.max).toPrecision(4);
    detail.dataset.index = card.dataset.index;
    detail.hidden = false;
  }
  function close() { detail.hidden = true; }
  for (const card of cards) {
    card.addEventListener('click', () => open(card));
    card.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') open(card); });
  }
  document.getElementById('close').addEventListener('click', close);
  detail.addEventListener('click', (ev) => { if (ev.target === detail) close(); });
  document.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') close(); });
  sort.addEventListener('change', apply);
  byClass.addEventListener('change', apply);
  byName.addEventListener('input', apply);
  apply();
})();
"""
