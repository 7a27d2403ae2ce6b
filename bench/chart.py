"""Draws bench/results.png from the raw output of bench/run.sh: good answers per second per
scenario and server, the median of the interleaved rounds with their range as an error bar (log
scale: the servers differ by orders of magnitude), and the upload batch. Run with the harness's
own virtual environment (matplotlib).

    chart.py RAW_DIR OUT.png
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from report import comparison, kv, spread  # noqa: E402

COLOURS = {"ours": "#1f6f8b", "plain": "#6fa8bf", "orig": "#e07a1f"}


def bars(ax, groups, series, values_of, names):
    """Grouped bars: for each group, one bar per series at the median, with the range."""
    width = 0.8 / len(series)
    for i, who in enumerate(series):
        xs, meds, lows, highs = [], [], [], []
        for j, group in enumerate(groups):
            values = values_of(group, who)
            x = j + (i - (len(series) - 1) / 2) * width
            if not values:
                continue
            m, lo, hi = spread(values)
            xs.append(x); meds.append(m); lows.append(m - lo); highs.append(hi - m)
            text = "none" if m == 0 else f"{m:,.0f}" if m >= 10 else f"{m:.1f}"
            ax.annotate(text, (x, hi if hi > 0 else 1), ha="center", va="bottom", fontsize=7,
                        rotation=90, xytext=(0, 2), textcoords="offset points",
                        color="black" if m > 0 else "#b8461b")
        # No good answers has no bar on a log scale: "none" is written at the axis instead.
        ax.bar(xs, [m if m > 0 else float("nan") for m in meds], width, label=names[who],
               color=COLOURS[who], yerr=[lows, highs], capsize=2, ecolor="#333333")


def main():
    raw, out = Path(sys.argv[1]), sys.argv[2]
    env = kv(raw / "env.txt")
    c = comparison(raw)
    names = dict(c["servers"]) | {"plain": "portfolio-server, no variants"}
    table = c["scenarios"]
    labels = [label.replace("`", "").replace(" (ours: ", "\n(ours: ").replace(", database", ",\ndatabase")
              .replace("stopped, ", "stopped,\n").replace(" with 10", "\nwith 10") for _, label, _ in table]
    uploads = c["uploads"]
    fig, axes = plt.subplots(2 if uploads["ours"] else 1, 1, figsize=(11, 10 if uploads["ours"] else 6),
                             squeeze=False)
    ax = axes[0][0]
    bars(ax, table, [w for w, _ in c["servers"]],
         lambda row, who: [r["rps"] for r in row[2][who]], names)
    ax.set_yscale("log")
    ax.set_ylim(bottom=1)
    ax.set_ylim(top=ax.get_ylim()[1] * 30)  # room for the labels above the tallest bar
    ax.set_xlim(-0.5, len(table) - 0.5)
    ax.set_title(f"good answers per second (log): median of {env.get('rounds', '1')} interleaved rounds, "
                 "bar: their range")
    ax.set_xticks(list(range(len(table))))
    ax.set_xticklabels(labels, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=len(c["servers"]), frameon=False)
    if uploads["ours"]:
        ax = axes[1][0]
        series = [w for w in ("ours", "plain", "orig") if uploads[w]]
        keys = ["photos_per_s", "all_stored_photos_per_s"]
        bars(ax, keys, series,
             lambda key, who: [float(u.get(key, u["photos_per_s"])) for u in uploads[who]], names)
        ax.set_xticks([0, 1])
        n = uploads["ours"][0]["files"]
        ax.set_xticklabels([f"one /api/upload-batch of {n} photos: answered",
                            "… and every variant stored"], fontsize=8)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.25)
        ax.set_title("photos per second (median, bar: range)")
        ax.legend(fontsize=8, loc="upper center", ncol=len(series), frameon=False)
    who = "portfolio-server and the original Python server" if c["orig"] else "portfolio-server"
    fig.suptitle(f"{who}: wrk -c{env['connections']} -d{env['duration']}, {env['cores']} cores, "
                 f"{env['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
