"""Plain-text tables for the ``skknn`` command's output."""

from __future__ import annotations

import numpy as np

TABLE_KS = (1, 10, 20, 50, 100, 200, 500, 1000)


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    # First column left-aligned (names), the others right-aligned (numbers).
    fmt = "  ".join(
        f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths)
    )
    line = "  ".join("-" * w for w in widths)
    return "\n".join([fmt.format(*header), line, *(fmt.format(*r) for r in rows)])


def step(title: str) -> None:
    print(f"\n== {title}")


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def accuracy_table(acc: dict[str, np.ndarray], ks=None) -> str:
    """Rows = voting rules, columns = selected k, plus the best k ([VM] Table 1)."""
    n = len(next(iter(acc.values())))
    wanted = list(ks or TABLE_KS)
    ks = [k for k in wanted if k <= n]
    if n < max(wanted) and n not in ks:
        ks.append(n)  # the memory or --max-k capped k: show the largest k evaluated
    rows = []
    for rule, a in acc.items():
        best = int(np.argmax(a))
        rows.append(
            [rule, *(pct(a[k - 1]) for k in ks), f"{pct(a[best])} @ k={best + 1}"]
        )
    return table(["voting", *(f"k={k}" for k in ks), "best"], rows)


def calibration_table(calibration: dict) -> str:
    """Rows = voting rules: the best k and the ECE there (%)."""
    rows = [[rule, str(k), pct(ece)] for rule, (k, ece, _) in calibration.items()]
    return table(["voting", "best k", "ECE (%)"], rows)


def neighbour_table(expl, q: int = 0) -> str:
    rows = [
        [
            str(r + 1),
            str(expl.neighbor_ids[q, r]),
            str(expl.neighbor_labels[q, r]),
            f"{expl.distances[q, r]:.4f}",
            f"{expl.weights[q, r]:.3f}",
        ]
        for r in range(expl.neighbor_ids.shape[1])
    ]
    return table(["rank", "sample id", "label", "distance", "vote share"], rows)
