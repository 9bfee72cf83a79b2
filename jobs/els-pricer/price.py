"""Price the sample ELS at several grids; write results.json and a plot of price and time vs grid.

    python jobs/els-pricer/price.py --grids 40x40x80,100x100x200,200x200x1080 [--device cpu|gpu]

Files go to ``$ORCH_OUTPUT_DIR`` (``./out`` when unset): ``results.json`` always, and
``els_pricer.png`` when matplotlib is installed (otherwise the output says the plot was skipped).
Timings exclude a small warm-up run (imports, cupy's kernel compile). On a GPU every grid is also
priced on the same machine's CPU (``--compare-cpu``), and the plot shows both times and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import kernels  # noqa: F401
except ImportError:  # run from a checkout without orch installed: the repo root is two levels up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kernels.els import ProductError, create_sample_els, load_product, mc_price_els, price_els  # noqa: E402
from kernels.probe import fetched_path, output_dir  # noqa: E402
from kernels.xp import DeviceError  # noqa: E402

PLOT = "els_pricer.png"


def parse_grids(text: str) -> list[tuple[int, int, int]]:
    """``"40x40x80,100x100x200"`` -> ``[(40, 40, 80), (100, 100, 200)]``."""
    grids = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            n1, n2, nt = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--grids: {part!r} is not N1xN2xNT (e.g. 100x100x200)") from None
        grids.append((n1, n2, nt))
    if not grids:
        raise SystemExit("--grids: give at least one N1xN2xNT")
    return grids


def plot(rows: list[dict], path: Path, cpu_rows: list[dict] | None = None) -> str:
    """Write the two-panel figure; returns a line for the log."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install 'orch[plot]')"
    labels = [f"{r['n1']}x{r['n2']}x{r['nt']}" for r in rows]
    cells = [r["n1"] * r["n2"] * r["nt"] for r in rows]
    prices, seconds = [r["price"] for r in rows], [r["seconds"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(cells, prices, "o-")
    ax1.set(xscale="log", xlabel="grid points x time steps", ylabel="price", title="ELS price vs grid")
    ax2.plot(cells, seconds, "s-", color="tab:red", label=rows[0]["device_name"])
    title = f"time per pricing ({rows[0]['device']})"
    if cpu_rows:
        cpu_s = [r["seconds"] for r in cpu_rows]
        ax2.plot(cells, cpu_s, "^--", color="tab:blue", label=f"{cpu_rows[0]['device_name']} (same machine)")
        for x, y, c in zip(cells, seconds, cpu_s):
            ax2.annotate(f"{c / y:.1f}x", (x, y), fontsize=7, xytext=(3, -10), textcoords="offset points", color="tab:red")
        title = f"time per pricing: {rows[0]['device']} vs cpu (speed-up under each point)"
        ax2.legend(fontsize=7)
    ax2.set(xscale="log", yscale="log", xlabel="grid points x time steps", ylabel="seconds", title=title)
    for ax, ys in ((ax1, prices), (ax2, seconds)):
        for x, y, lab in zip(cells, ys, labels):
            ax.annotate(lab, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"wrote {fetched_path(path)}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", default="40x40x80,80x80x150,100x100x200,200x200x1080")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    ap.add_argument("--product", metavar="FILE.yaml", help="default: the sample product")
    ap.add_argument("--mc-paths", type=int, default=0, help="also run Monte Carlo matched to the last grid")
    ap.add_argument("--compare-cpu", default="auto", choices=("auto", "yes", "no"),
                    help="also time every grid on this machine's CPU (auto: when the run is on a GPU)")
    args = ap.parse_args(argv)
    grids = parse_grids(args.grids)
    out = output_dir()
    out.mkdir(parents=True, exist_ok=True)
    try:
        product = load_product(args.product) if args.product else create_sample_els()
        price_els(product, 8, 8, 12, device=args.device)  # warm-up, not timed
        rows = []
        for n1, n2, nt in grids:
            r = price_els(product, n1, n2, nt, device=args.device)
            rows.append(r.as_dict())
            print(f"{n1:>4} x {n2:<4} x {nt:<5} price {r.price:10.5f}  delta {r.delta[0]:+.4f} {r.delta[1]:+.4f}"
                  f"  {r.seconds * 1e3:9.1f} ms  {r.device_name}", flush=True)
        cpu_rows = None
        if args.compare_cpu == "yes" or (args.compare_cpu == "auto" and rows[0]["device"] == "gpu"):
            cpu_rows = []
            for (n1, n2, nt), row in zip(grids, rows):
                c = price_els(product, n1, n2, nt, device="cpu")
                cpu_rows.append(c.as_dict())
                row["speedup_vs_cpu"] = c.seconds / row["seconds"]
                print(f"{n1:>4} x {n2:<4} x {nt:<5} cpu   {c.seconds * 1e3:9.1f} ms  {c.device_name}: "
                      f"{row['speedup_vs_cpu']:.1f}x speed-up", flush=True)
        mc = None
        if args.mc_paths:
            nt = grids[-1][2]
            m = mc_price_els(product, paths=args.mc_paths, steps_per_year=nt / product.maturity, seed=1, device=args.device)
            mc = m.as_dict()
            print(f"monte carlo {m.price:.5f} +- {m.stderr:.5f} ({m.paths} paths, {m.steps} steps, {m.seconds:.1f} s)")
    except (ProductError, DeviceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    results = {"product": product.to_dict(), "results": rows, "cpu_results": cpu_rows, "monte_carlo": mc}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {fetched_path(out / 'results.json')}")
    print(plot(rows, out / PLOT, cpu_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
