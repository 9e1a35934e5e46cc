"""``DIR/report.html``: one self-contained page on what a run directory holds.

Built from ``DIR/results.jsonl`` and the saved per-run artefacts alone (no retraining):
the stance table, the scores, per toy and site a |cos| heatmap of each method's chosen
run against the true features, recovery/FVU vs L0 sweeps, the twin panel, per-latent
cards and the failed runs. Images are PNGs embedded as base64 (no network, no external
CSS or JS); the same PNGs are written to ``DIR/plots/`` for papers.

Which run a heatmap shows: per method, the setting its *own rule* picks (the verdict's
self-selection: the sparsest setting with FVU <= target, else the lowest FVU; no ground
truth), at the lowest seed of that setting. The oracle setting (best strict MCC) is named
beside it when it differs.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from decompbench.bench import plots
from decompbench.bench.artefacts import RunArtefacts, load_run_artefacts
from decompbench.bench.executors import WorkerSetup, make_executor
from decompbench.bench.results import Record, read_records, write_text_atomic
from decompbench.bench.rows import (
    STANCE_HEADERS,
    STANCE_MEANING,
    stance_cells,
    stance_legend,
    summary_sentence,
)
from decompbench.bench.table import COLUMNS, Labeller, group_runs, mean_metric
from decompbench.bench.verdict import (
    TWIN_KEY,
    Setting,
    StanceRow,
    Thresholds,
    group_key,
    oracle_select,
    self_select,
    setting_label,
    settings_of,
    twin_scores,
    verdict,
)
from decompbench.errors import UserError
from decompbench.metrics.recovery import abs_cos, signed_sim

REPORT = "report.html"
PLOTS = "plots"
MAX_CARDS = 48  # per run; the rest are counted
FIGURES_PER_WORKER = 8  # drawing processes: at most one per this many figures
SECTIONS = [
    ("overview", "Overview"),
    ("stance", "Stance"),
    ("scores", "Scores"),
    ("heatmaps", "Learned vs true directions"),
    ("sweeps", "Sweeps over L0"),
    ("twins", "Twins"),
    ("latents", "Latent cards"),
    ("failed", "Failed runs"),
]
e = html.escape


# --- data -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """One toy (with its parameters) at one site: the unit of the verdict."""

    toy: str
    toy_params: dict[str, Any]
    site: str
    rows: list[tuple[int, Record]]  # (results.jsonl line, record)

    @property
    def key(self) -> str:
        return json.dumps([self.toy, self.toy_params, self.site], sort_keys=True)

    def title(self, names: Labeller) -> str:
        return f"{names.toy(self.toy, self.toy_params)} @ {self.site}"


@dataclass
class Best:
    """The run shown for one method in one group, and how it was chosen."""

    group: Group
    setting: Setting
    oracle: Setting
    record: Record
    artefacts: RunArtefacts | None = None
    problem: str = ""  # why there are no artefacts
    order: plots.Order | None = None
    cos_KM: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


def groups_of(records: list[Record]) -> list[Group]:
    by_key: dict[str, list[tuple[int, Record]]] = defaultdict(list)
    for line, r in enumerate(records, start=1):
        by_key[group_key(r)].append((line, r))
    return [Group(rs[0][1].toy, rs[0][1].toy_params, rs[0][1].site, rs) for rs in by_key.values()]


def best_runs(out_dir: Path, records: list[Record], group: Group, th: Thresholds) -> list[Best]:
    """Per method: its self-selected setting's lowest-seed ok run, with its artefacts.
    Converged settings are chosen from, as in the verdict (all, if none converged)."""
    by_method: dict[str, list[Setting]] = defaultdict(list)
    for s in settings_of(group.rows):
        by_method[s.method].append(s)
    out = []
    for method in sorted(by_method):
        converged = [s for s in by_method[method] if s.converged is not False]
        chosen = self_select(converged or by_method[method], th)
        runs = [records[line - 1] for line in chosen.lines]
        record = min(runs, key=lambda r: r.seed)
        best = Best(group, chosen, oracle_select(by_method[method], th), record)
        attach_artefacts(out_dir, best)
        if best.artefacts is not None:
            arrange(best)
        out.append(best)
    return out


def attach_artefacts(out_dir: Path, best: Best) -> None:
    if best.record.run_id is None:
        best.problem = "record has no run id (written by an older decompbench)"
        return
    try:
        best.artefacts = load_run_artefacts(out_dir, best.record.run_id)
    except UserError as err:
        best.problem = str(err)
        return
    if best.artefacts is None:
        best.problem = f"no artefacts saved for run {best.record.run_id}"


def arrange(best: Best) -> None:
    """Similarity of true features vs latents — sign-aware, as the metrics score it, when
    the artefacts hold the signs (|cos| for older ones) — and its Hungarian order."""
    art = best.artefacts
    assert art is not None
    G, D = art.true_directions_KD, art.directions_MD
    if art.true_sign_K is not None and art.latent_sign_M is not None:
        best.cos_KM = signed_sim(G, art.true_sign_K, D, art.latent_sign_M).numpy()
    else:
        best.cos_KM = abs_cos(G, D).numpy()
    if best.cos_KM.size:
        model_K = np.array(art.is_model, dtype=bool)
        best.order = plots.matched_order(best.cos_KM, art.alive_M.numpy(), model_K)


# --- html helpers ---------------------------------------------------------------------


def fmt(v: float | int | None, chance: float | None = None, digits: int = 2) -> str:
    if v is None:
        return "–"
    text = f"{v:.{digits}f}" if abs(v) < 100 else f"{v:.0f}"
    return text if chance is None else f'{text} <span class="ch">({chance:.2f})</span>'


def table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def slug(readable: str, unique: str) -> str:
    """A file name: ``readable`` made safe and cut short, plus a hash of ``unique``."""
    short = re.sub(r"[^A-Za-z0-9.=_-]+", "_", readable).strip("_")[:70]
    return f"{short}-{hashlib.sha256(unique.encode()).hexdigest()[:8]}"


class Images:
    """PNGs of one report: written to ``DIR/plots/`` and embedded as base64.

    Sections ask for figures with ``tag``, which returns a placeholder; ``fill`` draws them
    all at the end (in ``jobs`` processes when there are enough of them: drawing is most
    of a report's time) and puts each ``<figure>`` in its place.
    """

    def __init__(self, out_dir: Path, jobs: int = 1) -> None:
        self.dir = out_dir / PLOTS
        self.jobs = jobs
        self.figures: list[plots.Figure] = []
        self.written: list[Path] = []

    def tag(self, fig: plots.Figure) -> str:
        self.figures.append(fig)
        return f"\x00figure {len(self.figures) - 1}\x00"

    def drawn(self) -> list[bytes | str]:
        """PNG bytes of every figure, in order (an error's text where drawing failed)."""
        jobs = max(1, min(self.jobs, len(self.figures) // FIGURES_PER_WORKER))
        pool = make_executor("local", jobs, WorkerSetup())
        out: list[bytes | str] = [b""] * len(self.figures)
        with pool:
            for o in pool.imap_unordered(plots.draw_figure, self.figures):
                out[o.index] = o.value if o.value is not None else o.error or "no image"
        return out

    def fill(self, text: str) -> str:
        """``text`` with every placeholder replaced by its drawn figure."""
        if self.figures:
            self.dir.mkdir(exist_ok=True)
        parts = {}
        for i, (fig, data) in enumerate(zip(self.figures, self.drawn(), strict=True)):
            parts[f"\x00figure {i}\x00"] = self.embed(fig, data)
        return re.sub("\x00figure \\d+\x00", lambda m: parts[m.group(0)], text)

    def embed(self, fig: plots.Figure, data: bytes | str) -> str:
        if isinstance(data, str):
            return f'<div class="missing">{e(fig.alt)}: drawing failed ({e(data)})</div>'
        path = self.dir / f"{fig.name}.png"
        path.write_bytes(data)
        self.written.append(path)
        src = base64.b64encode(data).decode("ascii")
        cap = f"<figcaption>{fig.caption}</figcaption>" if fig.caption else ""
        return (
            f'<figure><img src="data:image/png;base64,{src}" alt="{e(fig.alt)}">{cap}'
            f'<div class="file">plots/{e(path.name)}</div></figure>'
        )

    def drop_stale(self) -> None:
        """Remove PNGs of an earlier report that this one did not write."""
        keep = set(self.written)
        for old in self.dir.glob("*.png") if self.dir.is_dir() else []:
            if old not in keep:
                old.unlink(missing_ok=True)


# --- sections -------------------------------------------------------------------------


def answer(records: list[Record], stances: list[StanceRow]) -> str:
    """The generated summary at the top: one sentence per toy and site, and the legend."""
    names = Labeller(records)
    items = "".join(
        f"<li>{e(summary_sentence(s, names.toy(s.toy, s.toy_params)))}</li>" for s in stances
    )
    legend = "".join(
        f'<li><span class="badge {STANCE_CLASS.get(k, "sna")}">{e(k)}</span> {e(v)}</li>'
        for k, v in STANCE_MEANING.items()
    )
    return (
        "<p><b>Does an activation-only decomposition find the features the model uses?</b> "
        "Per toy and site:</p>"
        f'<ul class="summary">{items}</ul><p class="note">Stances:</p><ul class="legend">'
        f"{legend}</ul>"
    )


def overview(out_dir: Path, records: list[Record], bests: list[Best]) -> str:
    ok = sum(r.status == "ok" for r in records)
    with_art = sum(b.artefacts is not None for b in bests)
    facts = [
        ("run directory", e(str(out_dir.resolve()))),
        ("runs", f"{len(records)} ({ok} ok, {len(records) - ok} failed)"),
        ("toys × sites", str(len({group_key(r) for r in records}))),
        ("methods", e(", ".join(sorted({r.method for r in records})))),
        ("seeds", e(", ".join(str(s) for s in sorted({r.seed for r in records})))),
        ("runs shown in detail", f"{len(bests)} ({with_art} with saved artefacts)"),
    ]
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    return (
        f'<table class="facts">{rows}</table><p class="note">Scores are on held-out samples '
        "against the model's features; numbers in grey brackets are the same score for "
        "the strongest null dictionaries of the same size in the data's span (chance).</p>"
    )


STANCE_CLASS = {"1": "s1", "2a": "s2a", "2b": "s2b", "unresolved": "sna"}


def stance_row(s: StanceRow, names: Labeller) -> list[str]:
    """One verdict row as HTML cells: the shared plain-text cells, escaped, with a badge."""
    cells = [e(c) for c in stance_cells(s, names.toy(s.toy, s.toy_params))]
    badge = STANCE_CLASS.get(s.stance, "sna")
    meaning = e(STANCE_MEANING.get(s.stance, ""))
    cells[2] = f'<span class="badge {badge}" title="{meaning}">{cells[2]}</span>'
    return cells


def stance_section(records: list[Record], stances: list[StanceRow]) -> str:
    if not stances:
        return "<p>No runs.</p>"
    names = Labeller(records)
    rows = [stance_row(s, names) for s in stances]
    legend = (
        e(stance_legend(stances[0].thresholds)) + " The same verdict as <code>stance.json</code>."
    )
    return f'<p class="note">{legend}</p>' + table(STANCE_HEADERS, rows, "stance")


def scores_section(records: list[Record]) -> str:
    rows = []
    for (toy, site, method), runs in group_runs(records).items():
        ok = [r for r in runs if r.status == "ok"]
        cells = [
            fmt(mean_metric(ok, k), mean_metric(ok, f"{k}_chance") if ch else None)
            for k, _, ch in COLUMNS
        ]
        access = "act-only" if runs[0].access == "activation_only" else "downstream"
        rows.append([e(toy), e(site), e(method), access, f"{len(ok)}/{len(runs)}", *cells])
    headers = ["toy", "site", "method", "access", "ok runs", *(h for _, h, _ in COLUMNS)]
    return '<p class="note">Means over seeds.</p>' + table(headers, rows, "scores")


def heatmap_figure(best: Best, names: Labeller, images: Images) -> str:
    art = best.artefacts
    r = best.record
    label = names.method(r.method, r.method_params)
    where = best.group.title(names)
    if art is None:
        return f'<div class="missing">{e(label)}: {e(best.problem)}</div>'
    if best.order is None:
        return f'<div class="missing">{e(label)}: no latents or no true features</div>'
    score = r.metrics.get("mcc_strict")
    title = f"{where} — {label} (seed {r.seed}; strict MCC {fmt(score)})"
    model_K = np.array(art.is_model, dtype=bool)
    args = (best.cos_KM, art.feature_names, model_K, art.alive_M.numpy(), best.order, title)
    name = slug(f"heatmap-{where}-{label}", best.group.key + label)
    return images.tag(
        plots.Figure(name, plots.heatmap_png, args, title, selection_note(best, names))
    )


def heatmaps_note(th: Thresholds) -> str:
    return (
        '<p class="note">Sign-aware similarity (as the metrics score it: |cos| where either '
        "side is two-sided) between every true feature (rows) and every learned direction "
        "(columns) of one run per method: the setting the method's <b>own rule</b> picks "
        f"(sparsest with FVU ≤ {th.fvu_target}, else lowest FVU; no ground truth), at its "
        "lowest seed. White boxes: the Hungarian matching (model features first, as in the "
        "scores; then data-only features among the latents left over). Left band: model "
        "feature (blue) or data-only (orange). Top band: latent alive (green) or dead (grey)."
        "</p>"
    )


def selection_note(best: Best, names: Labeller) -> str:
    s, o = best.setting, best.oracle
    text = f"Own rule; seed {best.record.seed}."
    if setting_label(s) != setting_label(o):
        text += (
            f" The oracle (best strict MCC, using the ground truth) would pick "
            f"{e(names.method(o.method, o.params))}: {fmt(o.get('mcc_strict'))}."
        )
    return text


def heatmaps_section(
    groups: list[Group], bests: dict[str, list[Best]], names: Labeller, images: Images
) -> str:
    parts = [heatmaps_note(Thresholds())]
    for g in groups:
        figs = "".join(heatmap_figure(b, names, images) for b in bests[g.key])
        figs = f'<div class="row">{figs}</div>' if figs else "<p>No successful runs.</p>"
        parts.append(f"<h3>{e(g.title(names))}</h3>{figs}")
    return "".join(parts)


def sweep_points(g: Group, names: Labeller, th: Thresholds) -> dict[str, list[plots.Point]]:
    """Per method, one point per parameter setting (metrics averaged over seeds)."""
    series: dict[str, list[plots.Point]] = defaultdict(list)
    for s in settings_of(g.rows):
        l0 = s.get("l0")
        if l0 is not None:
            label = names.method(s.method, s.params)
            score, chance = s.get(th.score), s.get(f"{th.score}_chance")
            series[s.method].append(plots.Point(l0, score, chance, s.get("fvu"), label))
    return dict(series)


def sweeps_section(groups: list[Group], names: Labeller, images: Images, th: Thresholds) -> str:
    parts = []
    for g in groups:
        series = sweep_points(g, names, th)
        if series:
            title = f"{g.title(names)}: one point per setting, mean over seeds"
            name = slug(f"sweep-{g.title(names)}", g.key)
            fig = images.tag(plots.Figure(name, plots.sweep_png, (series, th.score, title), title))
            parts.append(f"<h3>{e(g.title(names))}</h3>{fig}")
    return "".join(parts) or "<p>No successful runs.</p>"


def twin_families(groups: list[Group]) -> dict[str, dict[str, list[Setting]]]:
    """Groups that differ only in the twin key: twin value -> settings."""
    fam: dict[str, dict[str, list[Setting]]] = defaultdict(dict)
    for g in groups:
        if TWIN_KEY in g.toy_params:
            key = group_key(g.rows[0][1], TWIN_KEY)
            fam[key][str(g.toy_params[TWIN_KEY])] = settings_of(g.rows)
    return {k: v for k, v in fam.items() if len(v) >= 2}


def twin_label(s: Setting, names: Labeller) -> str:
    kind = "act-only" if s.access == "activation_only" else "downstream"
    return f"{names.method(s.method, s.params)} ({kind})"


def twin_block(
    key: str, twins: dict[str, list[Setting]], names: Labeller, images: Images, th: Thresholds
) -> str:
    """The twin panel and table of one toy family (twin value -> its settings)."""
    scores = twin_scores(twins)
    if not scores:
        return ""
    by_label = {setting_label(s): s for ss in twins.values() for s in ss}
    order = sorted(scores, key=lambda lab: -(scores[lab]["mcc_strict"] or 0.0))
    labels = [twin_label(by_label[lab], names) for lab in order]
    uses = sorted(twins)
    per: dict[str, dict[str, list[float | None]]] = {
        m: {u: [scores[lab]["per_twin"][u][m] for lab in order] for u in uses}
        for m in ("mcc", "mcc_strict")
    }
    toy, params, site = json.loads(key)
    title = f"{names.toy(toy, params)} @ {site}: score on each twin ({TWIN_KEY}=...)"
    name = slug(f"twins-{toy}-{site}", key)
    fig = images.tag(plots.Figure(name, plots.twin_png, (labels, per, title), title))
    rows = [
        [e(label), *(fmt(scores[lab]["per_twin"][u]["mcc_strict"]) for u in uses),
         fmt(scores[lab]["mcc_strict"]), fmt(scores[lab]["mcc"])]
        for label, lab in zip(labels, order, strict=True)
    ]  # fmt: skip
    headers = ["method", *(f"strict, {TWIN_KEY}={e(u)}" for u in uses), "twin strict (min)",
               "twin MCC (min)"]  # fmt: skip
    return f"<h3>{e(title)}</h3>{fig}{table(headers, rows, 'twins')}"


def twins_section(groups: list[Group], names: Labeller, images: Images, th: Thresholds) -> str:
    blocks = [twin_block(k, t, names, images, th) for k, t in twin_families(groups).items()]
    note = (
        '<p class="note">Twins have identical activations and differ only downstream: an '
        "activation-only method learns the same dictionary on both, so it can be right "
        "about at most one of them. Twin score = the lower of the two.</p>"
    )
    return note + ("".join(blocks) or "<p>No toy was run on both twins.</p>")


def card(art: RunArtefacts, j: int, cos_KM: np.ndarray, matched: dict[int, int]) -> str:
    names, model = art.feature_names, art.is_model
    i = int(np.argmax(cos_KM[:, j]))
    c = float(cos_KM[i, j])
    kind = "model" if model[i] else "data-only"
    m = matched.get(j)
    match = "unmatched" if m is None else f"{e(names[m])} ({cos_KM[m, j]:.2f})"
    eff = "–" if art.downstream_effect_M is None else f"{float(art.downstream_effect_M[j]):.3g}"
    scale = art.meta.get("downstream_output_norm")
    if art.downstream_effect_M is not None and scale:
        share = 100 * float(art.downstream_effect_M[j]) / scale
        eff += f" <span class='ch'>({share:.0f}% of |y|)</span>"
    return (
        f'<div class="card"><div class="lat">#{j}</div>'
        f'<div>nearest <b>{e(names[i])}</b> <span class="tag {kind}">{kind}</span></div>'
        f'<div class="bar"><span style="width:{100 * c:.0f}%"></span></div>'
        f"<div>|cos| {c:.2f} · matched {match}</div>"
        f"<div>fires {100 * float(art.firing_rate_M[j]):.1f}% · mean |a| "
        f"{float(art.mean_abs_M[j]):.3g}</div><div>downstream effect {eff}</div></div>"
    )


def latent_cards(best: Best, names: Labeller) -> str:
    art, order = best.artefacts, best.order
    r = best.record
    label = names.method(r.method, r.method_params)
    head = f"<h4>{e(best.group.title(names))} — {e(label)} (seed {r.seed})</h4>"
    if art is None or order is None:
        return head + f'<div class="missing">{e(best.problem or "no latents")}</div>'
    matched = {j: i for i, j in order.matched}
    alive = [j for j in order.cols if bool(art.alive_M[j])]
    dead = [j for j in order.cols if not bool(art.alive_M[j])]
    cards = "".join(card(art, j, best.cos_KM, matched) for j in alive[:MAX_CARDS])
    more = (
        f"<p>{len(alive) - MAX_CARDS} more alive latents not shown.</p>"
        if len(alive) > MAX_CARDS
        else ""
    )
    dead_txt = (
        f"<p>{len(dead)} dead latents: {e(' '.join(f'#{j}' for j in dead))}</p>" if dead else ""
    )
    return f'{head}<div class="cards">{cards}</div>{more}{dead_txt}'


def latents_section(all_bests: list[Best], names: Labeller) -> str:
    note = (
        '<p class="note">Latents of the runs shown in the heatmaps, in heatmap order. '
        "Downstream effect: mean over evaluation samples of the change (L2) of the "
        "network's output when the latent is zeroed in the spliced reconstruction.</p>"
    )
    return note + ("".join(latent_cards(b, names) for b in all_bests) or "<p>No runs.</p>")


def failed_section(records: list[Record], names: Labeller) -> str:
    rows = [
        [
            str(line),
            e(names.toy(r.toy, r.toy_params)),
            e(r.site),
            e(names.method(r.method, r.method_params)),
            str(r.seed),
            f"<code>{e(r.error or '')}</code>",
        ]
        for line, r in enumerate(records, start=1)
        if r.status == "failed"
    ]
    if not rows:
        return "<p>No failed runs.</p>"
    return table(["line", "toy", "site", "method", "seed", "error"], rows, "failed")


# --- page -----------------------------------------------------------------------------


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222}
header{background:#1f4e79;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
nav{padding:6px 24px;background:#eef2f7;position:sticky;top:0;z-index:1}
nav a{margin-right:14px;color:#1f4e79;text-decoration:none}
main{padding:0 24px 40px}section{margin-top:28px}h2{border-bottom:2px solid #1f4e79}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ccd;padding:3px 7px;text-align:left;vertical-align:top}
thead th{background:#eef2f7}table.facts th{background:#f6f6f6}
.ch{color:#888}.note{color:#555;max-width:75em}.missing{color:#a33;margin:6px 0}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;font-weight:bold;color:#fff}
.s1{background:#2e7d32}.s2a{background:#e0a030}.s2b{background:#c62828}.sna{background:#888}
.row{display:flex;flex-wrap:wrap;gap:4px 18px;align-items:flex-start}
.row figure{max-width:calc(50% - 12px)}
figure{margin:10px 0 18px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:12px;max-width:75em}.file{color:#999;font-size:11px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:8px}
.card{border:1px solid #ccd;border-radius:6px;padding:6px 8px;font-size:12px}
.lat{font-weight:bold}.tag{font-size:10px;padding:0 5px;border-radius:6px;color:#fff}
.tag.model{background:#1f4e79}.tag.data-only{background:#e0a030}
.bar{height:5px;background:#eee;margin:3px 0}.bar span{display:block;height:5px;background:#55a868}
code{font-size:12px;white-space:pre-wrap}
"""


def page(out_dir: Path, body: dict[str, str]) -> str:
    nav = "".join(f'<a href="#{sid}">{e(t)}</a>' for sid, t in SECTIONS)
    sections = "".join(
        f'<section id="{sid}"><h2>{e(t)}</h2>{body[sid]}</section>' for sid, t in SECTIONS
    )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>decompbench report: {e(out_dir.name)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>decompbench report — {e(out_dir.name)}</h1>"
        f"<div>generated {stamp} from results.jsonl and artefacts/</div></header>"
        f"<nav>{nav}</nav><main>{sections}</main></body></html>\n"
    )


def render(out_dir: Path, jobs: int = 1) -> str:
    """The report's HTML; writes its PNGs to ``DIR/plots/`` (drawn in ``jobs`` processes)."""
    records = read_records(out_dir)
    th = Thresholds()
    names = Labeller(records)
    groups = groups_of(records)
    bests = {g.key: best_runs(out_dir, records, g, th) for g in groups}
    flat = [b for g in groups for b in bests[g.key]]
    images = Images(out_dir, jobs)
    stances = verdict(records, th)
    body = {
        "overview": answer(records, stances) + overview(out_dir, records, flat),
        "stance": stance_section(records, stances),
        "scores": scores_section(records),
        "heatmaps": heatmaps_section(groups, bests, names, images),
        "sweeps": sweeps_section(groups, names, images, th),
        "twins": twins_section(groups, names, images, th),
        "latents": latents_section(flat, names),
        "failed": failed_section(records, names),
    }
    text = images.fill(page(out_dir, body))
    images.drop_stale()
    return text


def write_report(out_dir: Path, jobs: int = 1) -> Path:
    """Regenerate ``DIR/report.html`` and ``DIR/plots/*.png``; return the report's path.

    ``jobs`` processes draw the figures (at most one per ``FIGURES_PER_WORKER``)."""
    if not out_dir.is_dir():
        raise UserError(f"{out_dir}: not a directory (expected a decompbench run directory)")
    path = out_dir / REPORT
    try:
        write_text_atomic(path, render(out_dir, jobs))
    except OSError as err:
        raise UserError(f"{out_dir}: cannot write the report: {err.strerror or err}") from None
    return path
