"""Draws bench/results.png from the raw output of bench/run.sh: good answers per second and p99
latency per scenario and server (log scales: the servers differ by orders of magnitude), and the
upload batch. Run with the harness's own virtual environment (matplotlib).

    chart.py RAW_DIR OUT.png
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from report import comparison, kv  # noqa: E402

COLOURS = ["#1f6f8b", "#e07a1f", "#b8461b"]
UPLOAD_COLOURS = {"portfolio-server": "#1f6f8b", "original": "#e07a1f"}


def main():
    raw, out = Path(sys.argv[1]), sys.argv[2]
    env = kv(raw / "env.txt")
    table, orig, uploads = comparison(raw)
    servers = [name for _, name, _ in table[0][2]]
    labels = [label.replace("`", "").replace(" (ours: ", "\n(ours: ").replace(", database", ",\ndatabase")
              .replace("stopped, ", "stopped,\n") for _, label, _ in table]

    fig, axes = plt.subplots(3 if uploads else 2, 1, figsize=(11, 13 if uploads else 9))
    width = 0.8 / len(servers)
    x = range(len(table))
    for panel, (metric, title) in enumerate((("rps", "good answers per second (log)"),
                                            ("p99", "p99 latency, ms (log)"))):
        ax = axes[panel]
        for i, name in enumerate(servers):
            values = []
            for _, _, cells in table:
                r = cells[i][2]
                values.append(r[metric] if r else 0)
            xs = [j + (i - (len(servers) - 1) / 2) * width for j in x]
            # Nothing to draw for no good answers on a log scale: say "none" at the axis instead.
            ax.bar(xs, [v if v > 0 else float("nan") for v in values], width, label=name,
                   color=COLOURS[i])
            for xpos, v in zip(xs, values):
                text = "none" if v == 0 else f"{v:,.0f}" if v >= 10 else f"{v:.2f}"
                ax.annotate(text, (xpos, v if v > 0 else 1),
                            ha="center", va="bottom", fontsize=7, rotation=90, xytext=(0, 2),
                            textcoords="offset points", color="black" if v > 0 else "#b8461b")
        ax.set_yscale("log")
        ax.set_ylim(bottom=1)
        ax.set_xlim(-0.5, len(table) - 0.5)  # NaN bars (no good answers) take no room by themselves
        ax.set_title(title)
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylim(top=ax.get_ylim()[1] * 30)  # room for the labels above the tallest bar
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", ncol=len(servers), frameon=False)
    if uploads:
        ax = axes[2]
        names = [name for name, _ in uploads]
        rates = [float(u["photos_per_s"]) for _, u in uploads]
        colours = [UPLOAD_COLOURS["original" if n.startswith("original") else "portfolio-server"]
                   for n in names]
        bars = ax.barh(names, rates, color=colours)
        for bar, u in zip(bars, (u for _, u in uploads)):
            ax.annotate(f"{float(u['photos_per_s']):.1f}/s ({u['uploaded']} of {u['files']} uploaded)",
                        (bar.get_width(), bar.get_y() + bar.get_height() / 2), va="center",
                        fontsize=8, xytext=(3, 0), textcoords="offset points")
        ax.invert_yaxis()
        ax.margins(x=0.3)
        ax.set_title(f"one /api/upload-batch of {uploads[0][1]['files']} photos into the Supabase "
                     "stand-in: photos per second")
    who = "portfolio-server and the original Python server" if orig else "portfolio-server"
    fig.suptitle(f"{who}: wrk -c{env['connections']} -d{env['duration']}, {env['cores']} cores, "
                 f"{env['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
