"""Writing the report: report.md, and report.html rendered from it by a Markdown library with the figures embedded."""

from __future__ import annotations

import base64
import datetime
import io
from pathlib import Path

from jscale.errors import JscaleError
from jscale.report.common import N_BOOTSTRAP, find_experiments
from jscale.report.sections import sections_of


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def write_report(root: str | Path, out: str | Path | None = None, latency: bool = True,
                 n_bootstrap: int = N_BOOTSTRAP, baselines: bool = True) -> dict[str, Path]:
    root = Path(root)
    out = Path(out) if out else root / "report"
    if n_bootstrap < 0:
        raise JscaleError(f"--bootstrap: must be >= 0, got {n_bootstrap}")
    if out.exists() and not out.is_dir():
        raise JscaleError(f"--out: {out} is a file, not a directory")
    exps = find_experiments(root)
    sections = sections_of(exps, out, latency, n_bootstrap, baselines)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for e in exps:
        cols = ["run_id", "name", "kind", "n_layer", "d_model", "d_ff", "d_attn", "n_heads", "n_kv_heads", "reuse",
                "mem_len", "n_ctx", "N", "N_total", "D", "seed", "lr", "tokens_trained", "C_6N", "C_exact",
                "final_val_loss", "final_val_se", "final_test_loss", "final_test_se", "best_val_loss", "best_val_step",
                "tokens_per_param", "epochs", "late_improvement", "regime", "tokens_per_s"]
        e.runs[cols].to_csv(out / f"{e.name}-runs.csv", index=False)
    import jax

    stamp = (f"{datetime.date.today().isoformat()}, {jax.devices()[0].device_kind} ({jax.default_backend()}), "
             f"jax {jax.__version__}")
    md = [f"# jscale report: {root}", "", f"Written {stamp}. Figures, numbers and verdicts are computed from the "
          f"results databases by `jscale report`; nothing here is written by hand.", ""]
    md += summary(sections)
    pngs: dict[str, bytes] = {}
    for sec in sections:
        head = f"{sec.title} (`{sec.name}`" + (f", scale {sec.scale})" if sec.scale else ")")
        md += [f'<a id="{anchor(sec)}"></a>', "", f"## {head}", "", f"Claim tested: {sec.claim}", ""]
        if sec.verdicts:
            md += ["Verdicts:", ""] + [f"- {v}" for v in sec.verdicts] + [""]
        for name, fig in sec.figures.items():
            path = out / "figures" / f"{sec.name}-{name}.png"
            pngs[path.name] = _png(fig)
            path.write_bytes(pngs[path.name])
            md += [f"![{sec.name} {name}](figures/{path.name})", ""]
        if sec.numbers:
            md += _md_table(["quantity", "ours", "95% interval", "published"], sec.numbers)
        for header, rows in sec.tables:
            md += _md_table(header, rows)
        for note in sec.notes:
            md += [f"_{note}_", ""]
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(markdown_page(text, pngs))
    return {"html": out / "report.html", "markdown": out / "report.md"}


def anchor(sec) -> str:
    return f"section-{sec.name}"


def _brief(why: str, limit: int = 220) -> str:
    """A verdict's reason for the summary table: up to its first clause break ('; '), cut at a word if longer."""
    head = why.split("; ")[0]
    if len(head) <= limit:
        return head + (" ..." if len(head) < len(why) else "")
    return head[:limit].rsplit(" ", 1)[0] + " ..."


def summary(sections) -> list[str]:
    """The page at a glance: a table of contents, and every verdict in one table (section, claim, outcome, estimate
    and interval, the region and whether it is quantitative or a direction only, and what kept it undecided)."""
    md = ["Sections: " + " · ".join(f"[{sec.title}](#{anchor(sec)})" for sec in sections), ""]
    rows = []
    for sec in sections:
        for v in sec.decisions:
            est = "-" if v.estimate is None else f"{v.estimate:.4g}"
            ci = "-" if v.interval is None else f"{v.interval[0]:.4g} to {v.interval[1]:.4g}"
            why = v.reason if v.outcome == "inconclusive" else ""
            rows.append([f"[{sec.name}](#{anchor(sec)})", v.claim, f"**{v.outcome}**", est, ci,
                         v.region.text if v.region.kind in v.region.text else f"{v.region.text} ({v.region.kind})",
                         _brief(why)])
    if rows:
        counts = {o: sum(r[2] == f"**{o}**" for r in rows) for o in ("supports", "contradicts", "inconclusive")}
        md += [f"Every verdict ({', '.join(f'{n} {o}' for o, n in counts.items())}): the one rule of jscale.verdicts, "
               f"the claim's region against the 95% interval.", ""]
        md += _md_table(["section", "claim", "verdict", "estimate", "95% interval", "region (kind)",
                         "why inconclusive"], rows)
    return md


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(header, rows) -> list[str]:
    return (["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows] + [""])


def markdown_page(text: str, pngs: dict[str, bytes]) -> str:
    """report.html: report.md rendered by a Markdown library (so no markup shows as literal text), with each
    figure embedded as PNG data so the page stands alone."""
    import markdown

    body = markdown.markdown(text, extensions=["tables", "sane_lists"], output_format="html")
    for name, png in pngs.items():
        body = body.replace(f'src="figures/{name}"', f'src="data:image/png;base64,{base64.b64encode(png).decode()}"')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "img{max-width:100%;display:block;margin:1em 0}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #999;padding:3px 8px;font-size:13px}em{color:#555}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>jscale report</title><style>{style}</style>"
            f"</head><body>{body}</body></html>")
