"""Our service against the general-purpose model servers, same load, same payloads.

    python -m bench.peers --install            # the peers' venvs (.venv-peers/), pinned
    python -m bench.peers [--quick] [--model-dir DIR] [--out JSON] [--no-plots]
        [--parts same,users] [--photos DIR] [--focus SERVERS [--rounds N]]

1. Same engine: our engine (demo model, jump-forward, batch 16, the service's thread
   count) served by us, LitServe, Ray Serve and BentoML (PyTriton: see its row); closed
   loop 1/16/32/64 clients, open loop at 0.9x and 3x each server's saturation, rounds
   alternating, and the behaviour rows (:mod:`bench.peers.behaviour`) in round 0.
2. As users would write it: each peer serving Florence-2 with processor + ``generate``
   (no grammar, its own batching), and the paper's Space style (3 beams, one at a time)
   as the floor, at 32 clients; valid-JSON answers counted as well as answers.

Prints Markdown tables, writes the plots to docs/img/ and everything to JSON; the last
two lines are ``vs best peer (same engine): <ratio>`` and ``vs best peer (as written by
users): <ratio>`` (ours over the best peer; the ratio of medians at 32 clients, 16 in
``--quick``). ``--focus ours,litserve [--rounds 4]`` measures only those servers' throughput
at 32 clients, alternating, to settle a close call. ``--photos DIR`` sends real photos (``DIR/<class>/*.jpg``, classes in turn)
instead of the synthetic garments; ``--parts users`` runs the second part alone, with our
server measured beside the peers. A peer that is not installed or does not start is a row saying why.
Servers listen on 127.0.0.1 only. Bounded: about 13 minutes on 2 cores; --quick, one
short point per server.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from bench.load import payloads, photo_payloads
from bench.models import prepare_model
from bench.peers import report
from bench.peers.behaviour import behaviour_rows
from bench.peers.install import PEERS, install_all
from bench.peers.load_runs import LoadPlan, Row, Starter, alternating, median_at
from bench.peers.servers import (
    ABLATION,
    PYTRITON_REASON,
    SAME_ENGINE_PEERS,
    STARTERS,
    Served,
    start_ours,
    start_paper_demo,
)

RESULTS: Final = Path(__file__).resolve().parents[1] / "results" / "peers.json"


def same_engine_starters(model_dir: Path, quick: bool) -> dict[str, Starter]:
    starters: dict[str, Starter] = {"ours": lambda: start_ours(model_dir)}
    if not quick:  # the ablation: two API servers in front of the engine core
        starters[ABLATION] = lambda: start_ours(model_dir, api_servers=2)
    for peer in SAME_ENGINE_PEERS:
        starters[peer] = functools.partial(STARTERS[peer], model_dir, "same")
    return starters


def same_engine(model_dir: Path, images: list[bytes], quick: bool) -> list[Row]:
    plan = LoadPlan.quick() if quick else LoadPlan()

    def behaviour(server: Served) -> Row:
        return {"behaviour": behaviour_rows(server, images, trials=1 if quick else 10,
                                            corrupt_only=quick)}  # fmt: skip

    return alternating(same_engine_starters(model_dir, quick), images, plan, behaviour)


def focused(model_dir: Path, images: list[bytes], servers: list[str], rounds: int) -> list[Row]:
    """Throughput only, to settle a close call: the named same-engine servers at 32 clients,
    ``rounds`` alternating rounds, no open loop, no behaviour rows."""
    every = same_engine_starters(model_dir, quick=False)
    unknown = set(servers) - set(every)
    if unknown:
        raise SystemExit(f"--focus: unknown servers {sorted(unknown)}; known: {sorted(every)}")
    base = LoadPlan()
    plan = LoadPlan((32,), (), base.point_s, rounds, base.max_requests)
    return alternating({name: every[name] for name in servers}, images, plan)


def as_users_write_it(
    model_dir: Path, images: list[bytes], quick: bool, *, with_ours: bool
) -> list[Row]:
    """``with_ours``: measure our server in this part too (when the same-engine part, which
    otherwise gives our figure, is not run)."""
    peers = ("litserve",) if quick else SAME_ENGINE_PEERS
    starters: dict[str, Starter] = {"ours": lambda: start_ours(model_dir)} if with_ours else {}
    for peer in peers:
        starters[peer] = functools.partial(STARTERS[peer], model_dir, "users")
    if not quick:  # the floor; bench.run's quick test already starts the paper demo
        starters["paper-demo"] = lambda: start_paper_demo(model_dir)
    base = LoadPlan.quick() if quick else LoadPlan()
    plan = LoadPlan((base.concurrencies[0] if quick else 32,), (), base.point_s, 1,
                    base.max_requests)  # fmt: skip
    return alternating(starters, images, plan)


def ratio(ours: float | None, peers: list[float | None]) -> float | None:
    """Ours over the best measured peer; infinite when every measured peer gave none."""
    known = [p for p in peers if p is not None]
    if ours is None or not known:
        return None
    best = max(known)
    if best == 0:
        return math.inf if ours > 0 else None
    return ours / best


def summarize(same: list[Row], users: list[Row], clients: int) -> Row:
    peers = [p for p in SAME_ENGINE_PEERS if any(r["server"] == p and "closed" in r for r in same)]
    ours = median_at(same, "ours", clients, "img_s")
    ours_valid = median_at(same, "ours", clients, "valid_per_s")
    if ours_valid is None:  # the users part ran alone and measured ours itself
        ours_valid = median_at(users, "ours", clients, "valid_per_s")
    user_peers = [
        r["server"] for r in users if "closed" in r and r["server"] not in ("ours", "paper-demo")
    ]
    return {
        "clients": clients,
        "ours_img_s": ours,
        "ours_p99_ms": median_at(same, "ours", clients, "p99_ms"),
        "same_engine": {p: {"img_s": median_at(same, p, clients, "img_s"),
                            "p99_ms": median_at(same, p, clients, "p99_ms")} for p in peers},
        "users": {p: median_at(users, p, clients, "valid_per_s") for p in
                  [*user_peers, "paper-demo"]},
        "vs_same_engine": ratio(ours, [median_at(same, p, clients, "img_s") for p in peers]),
        "ablation": {
            "img_s": median_at(same, ABLATION, clients, "img_s"),
            "p99_ms": median_at(same, ABLATION, clients, "p99_ms"),
            "vs_same_engine": ratio(median_at(same, ABLATION, clients, "img_s"),
                                    [median_at(same, p, clients, "img_s") for p in peers]),
        },
        "vs_users": ratio(ours_valid, [median_at(users, p, clients, "valid_per_s")
                                       for p in user_peers]),
        "vs_paper_demo": ratio(ours_valid, [median_at(users, "paper-demo", clients,
                                                      "valid_per_s")]),
    }  # fmt: skip


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render(result: Row) -> str:
    same, users, s = result["same_engine"], result["users"], result["summary"]
    return "\n".join([
        f"machine: {result['machine']}", f"wall time: {result['wall_s']:.0f} s",
        f"payloads: {result['payloads']}", "",
        "## Same engine: closed loop", "", report.closed_table(same), "",
        "## Same engine: open loop (0.9x and 3x each server's own saturation)", "",
        report.open_table(same), "",
        "## Behaviour rows", "", report.behaviour_table(same), "",
        f"pytriton: {result['pytriton']}", "",
        "## Cold start and peak RSS", "", report.resources_table([*same, *users]), "",
        "## As users would write it (processor + generate, no grammar; paper demo = floor)", "",
        report.closed_table(users), "",
        f"summary: {json.dumps(s)}",
        f"ablation, {ABLATION} (FF_API_SERVERS=2): "
        f"vs best peer {fmt(s['ablation']['vs_same_engine'])}",
        f"vs best peer (same engine): {fmt(s['vs_same_engine'])}",
        f"vs best peer (as written by users): {fmt(s['vs_users'])}",
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--install", action="store_true", help="install the peers' venvs, exit")
    parser.add_argument("--quick", action="store_true", help="one short point per server")
    parser.add_argument("--model-dir", type=Path, default=None, help="skip building the model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--parts", default="same,users", help="same, users or both")
    parser.add_argument("--photos", type=Path, default=None, help="real photos as payloads")
    parser.add_argument("--focus", default=None, help="servers for a throughput-only run")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of a --focus run")
    args = parser.parse_args()
    if args.install:
        for peer, state in install_all(PEERS).items():
            print(f"{peer}: {state}")
        return 0
    from bench.offline import machine_line

    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if not parts or parts - {"same", "users"}:
        parser.error(f"--parts: 'same', 'users' or both, not {args.parts!r}")
    started = time.perf_counter()
    images = photo_payloads(args.photos, 64) if args.photos else payloads(64)
    with tempfile.TemporaryDirectory(prefix="ff-peers-") as work:
        model_dir = args.model_dir or prepare_model(Path(work))
        if args.focus:
            parts = {"same"}
            names = [name.strip() for name in args.focus.split(",") if name.strip()]
            same = focused(model_dir, images, names, args.rounds)
        else:
            same = same_engine(model_dir, images, args.quick) if "same" in parts else []
        users = (
            as_users_write_it(model_dir, images, args.quick, with_ours="same" not in parts)
            if "users" in parts
            else []
        )
    clients = LoadPlan.quick().concurrencies[0] if args.quick else 32
    result: dict[str, Any] = {
        "machine": machine_line(),
        "quick": args.quick,
        "payloads": str(args.photos) if args.photos else "synthetic garments (bench.load)",
        "wall_s": time.perf_counter() - started,
        "same_engine": same,
        "users": users,
        "pytriton": PYTRITON_REASON,
        "summary": summarize(same, users, clients),
    }
    if not args.no_plots and same and not args.focus:
        # A quick run's figures are a smoke test: its plots go next to its JSON.
        where = args.out.parent if args.quick else report.IMG_DIR
        result["plots"] = [
            str(p) for p in report.plot(same, "peers-same-engine", "same engine", where)
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
