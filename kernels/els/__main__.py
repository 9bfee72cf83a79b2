"""Command line: ``python -m kernels.els --n 200 --nt 1080 [--device cpu|gpu] [--product file.yaml] [--json]``.

Prices the sample product (or a YAML product) by finite differences and, with ``--mc PATHS``,
checks it against Monte Carlo at the matched monitoring frequency. ``--greeks full`` adds the
bumped sensitivities (one batch of 9 pricings); ``--batch FILE`` prices a YAML list of products
in one batch instead. Bad input (a product file, a device that is not there) is one line on
stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kernels.els.batch import price_els_batch
from kernels.els.fdm import SOLVERS, price_els
from kernels.els.greeks import price_els_greeks
from kernels.els.mc import mc_price_els
from kernels.els.product import ProductError, create_sample_els, load_product, load_products
from kernels.xp import DeviceError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kernels.els",
        description="Price a two-asset step-down ELS (OSM finite differences, optional Monte Carlo check).",
        epilog="Example: python -m kernels.els --n 200 --nt 1080 --mc 1000000 --json",
    )
    p.add_argument("--n", type=int, default=200, help="space intervals per asset (default 200)")
    p.add_argument("--n1", type=int, help="intervals for asset 1 (default: --n)")
    p.add_argument("--n2", type=int, help="intervals for asset 2 (default: --n)")
    p.add_argument("--nt", type=int, default=1080, help="time steps; knock-in is monitored at each (default 1080)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"), help="default: $ORCH_DEVICE, else detect")
    p.add_argument("--solver", default="blocks", choices=SOLVERS, help="CPU line solver (default blocks)")
    p.add_argument("--product", metavar="FILE.yaml", help="product definition (default: the sample product)")
    p.add_argument("--mc", type=int, default=0, metavar="PATHS", help="also price by Monte Carlo with PATHS paths")
    p.add_argument("--seed", type=int, default=0, help="Monte Carlo seed (default 0)")
    p.add_argument("--greeks", choices=("full",), help="full: also vega, rate rho and correlation by bump-and-reprice (one batch)")
    p.add_argument("--batch", metavar="FILE.yaml", help="price a YAML list of products in one batch (not with --product/--mc/--greeks)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _run_batch(args: argparse.Namespace, n1: int, n2: int) -> dict[str, Any]:
    results = price_els_batch(load_products(args.batch), n1=n1, n2=n2, nt=args.nt, device=args.device)
    return {"batch": args.batch, "results": [r.as_dict() for r in results]}


def _run(args: argparse.Namespace) -> dict[str, Any]:
    n1, n2 = args.n1 or args.n, args.n2 or args.n
    if args.batch:
        return _run_batch(args, n1, n2)
    product = load_product(args.product) if args.product else create_sample_els()
    fdm = price_els(product, n1=n1, n2=n2, nt=args.nt, device=args.device, solver=args.solver)
    out: dict[str, Any] = {"product": args.product or "sample", "fdm": fdm.as_dict()}
    if args.greeks:
        out["greeks"] = price_els_greeks(product, n1, n2, args.nt, device=args.device)
    if args.mc:
        mc = mc_price_els(product, paths=args.mc, steps_per_year=args.nt / product.maturity, seed=args.seed, device=args.device)
        out["mc"] = mc.as_dict()
        out["fdm_minus_mc_pct"] = 100.0 * (fdm.price - mc.price) / mc.price
    return out


def _batch_text(r: dict[str, Any]) -> str:
    rows = r["results"]
    f = rows[0]
    lines = [
        f"batch    {r['batch']}: {len(rows)} products",
        f"grid     {f['n1']} x {f['n2']} x {f['nt']}  ({f['device_name']}, solver {f['solver']})",
        f"time     {f['seconds']:.4f} s per pricing",
    ]
    lines += [f"[{k}]{' ' * max(1, 7 - len(str(k)))}price {x['price']:.6f}  delta {x['delta'][0]:+.6f} {x['delta'][1]:+.6f}"
              for k, x in enumerate(rows)]
    return "\n".join(lines)


def _text(r: dict[str, Any]) -> str:
    if "batch" in r:
        return _batch_text(r)
    f = r["fdm"]
    lines = [
        f"product  {r['product']}",
        f"grid     {f['n1']} x {f['n2']} x {f['nt']}  ({f['device_name']}, solver {f['solver']})",
        f"price    {f['price']:.6f}",
        f"delta    {f['delta'][0]:+.6f} {f['delta'][1]:+.6f}",
        f"gamma    {f['gamma'][0]:+.6f} {f['gamma'][1]:+.6f}",
        f"time     {f['seconds']:.4f} s",
    ]
    if "mc" in r:
        m = r["mc"]
        lines.append(
            f"mc       {m['price']:.6f} +- {m['stderr']:.6f} ({m['paths']} paths, {m['steps']} steps, {m['seconds']:.1f} s);"
            f" fdm - mc = {r['fdm_minus_mc_pct']:+.3f} %"
        )
    if "greeks" in r:
        g = r["greeks"]
        lines.append(
            f"greeks   vega {g['vega'][0]:+.6f} {g['vega'][1]:+.6f}  rate rho {g['rate_rho']:+.4f}"
            f"  correlation {g['correlation']:+.6f}  ({g['pricings']} pricings in one batch, {g['seconds']:.4f} s)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.batch and (args.product or args.mc or args.greeks):
        parser.error("--batch prices the products of its file; it does not combine with --product, --mc or --greeks")
    try:
        result = _run(args)
    except (ProductError, DeviceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else _text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
