"""The paper's Table 1 as text: per stage its output shape, blocks, block layout, parameters
and MACs, from one hooked forward (macs.profile, whose stages are Table 1's rows).

The "MACs per 3x3 layer" column shows the design rule of section 3.3 (see macs.py): a 3x3 layer
costs the same in every stage.
"""
from __future__ import annotations

from ..text import format_table
from .macs import Profile, Shape

COLUMNS = (("name", "stage", ""), ("paper", "paper", ""), ("output", "output", ""),
           ("blocks", "blocks", ">"), ("layout", "layout", ""), ("params", "params", ","),
           ("macs", "MACs", ">"), ("per_3x3", "MACs/3x3", ">"))


def format_macs(n: int) -> str:
    """4089184256 -> "4.089G" (the paper's unit), 40551040 -> "40.6M"."""
    for unit, scale, digits in (("G", 1e9, 3), ("M", 1e6, 1), ("K", 1e3, 1)):
        if n >= scale:
            return f"{n / scale:.{digits}f}{unit}"
    return str(n)


def format_shape(shape: Shape) -> str:
    return "x".join(map(str, shape))


def render_summary(summary: Profile, title: str | None = None) -> str:
    """Table 1 as text, with a total row and a note on the per-3x3-layer cost."""
    rows = [{"name": s.name, "paper": s.paper_name, "output": format_shape(s.output_shape),
             "blocks": s.blocks or None, "layout": s.block, "params": s.params,
             "macs": format_macs(s.macs),
             "per_3x3": format_macs(s.macs_per_3x3) if s.macs_per_3x3 is not None else None}
            for s in summary.stages]
    rows.append({"name": "total", "paper": "", "output": "", "blocks": summary.blocks,
                 "layout": "", "params": summary.params, "macs": format_macs(summary.macs),
                 "per_3x3": ""})
    per = [format_macs(s.macs_per_3x3) for s in summary.stages if s.macs_per_3x3 is not None]
    if summary.level:
        note = (f"MACs/3x3: one 3x3 layer costs {per[0]} in every stage: the filters double as "
                f"the map halves (section 3.3).")
    else:
        note = (f"MACs/3x3: one 3x3 layer costs {', '.join(per)} by stage: not level at this "
                f"input (section 3.3 keeps it level when every stage halves the map exactly).")
    parts = [title] if title else []
    parts += [format_table(rows, COLUMNS, rule="columns"),
              f"MACs: multiply-adds of conv and fc layers ({summary.macs:,} in total).", note]
    return "\n".join(parts)
