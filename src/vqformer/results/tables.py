"""One table per comparison: which runs belong to it (by their config, not by the command that launched
them, so an arm shared by two sweeps counts in both), which knob varies, and mean / spread over seeds."""
from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field

from . import paper
from .stats import paired_ci


@dataclass
class TableSpec:
    name: str            # file stem under the output folder
    title: str
    vary: str            # record key that tells the arms apart
    where: dict = field(default_factory=dict)   # record key -> required value ("tags" -> a required tag)
    reference: object = None                    # the arm the others are compared with
    paper: str = ""                             # what the paper reports, for the reader
    predicted: dict = field(default_factory=dict)   # arm -> "worse" | "better" than the reference, fixed before running
    paper_effect: float | None = None           # bpb: the size of the paper's effect a CI must be narrower than

    def selects(self, rec: dict) -> bool:
        for k, want in self.where.items():
            if k == "tags":
                if want not in rec["tags"]:
                    return False
            elif rec.get(k) != want:
                return False
        return rec.get("val_bpb") is not None


# The mini ablations as redesigned for issue 14: 2048-byte sequences trained with the state carried
# (conf/experiment/tvq/mini_base.yaml); runs of the earlier 256-byte protocol are not mixed in.
MINI = dict(tags="mini", data="wiki_sample", sequence_len=2048)
SPECS = [
    TableSpec("mini_codebook", "Codebook size S (CPU mini, wiki_sample)", "n_code",
              dict(MINI, attn_type="vq", agg_cache=True, block_len=64), 64, paper.TABLE_NOTES["codebook"],
              predicted={16: "worse", 256: "better"}, paper_effect=paper.CODEBOOK_STEP_BPB),
    TableSpec("mini_cache", "Compressive cache (CPU mini, wiki_sample, S = 64)", "agg_cache",
              dict(MINI, attn_type="vq", n_code=64, block_len=64), True, paper.TABLE_NOTES["cache"],
              predicted={False: "worse"}, paper_effect=paper.CACHE_VAL_BPB[False] - paper.CACHE_VAL_BPB[True]),
    TableSpec("mini_quadratic", "Transformer-VQ vs quadratic attention (CPU mini, wiki_sample)", "attn_type",
              dict(MINI, agg_cache=True, n_code=64, block_len=64), "vq", paper.TABLE_NOTES["quadratic"],
              predicted={"full": "better"}),
    TableSpec("mini_block", "Block length L = M (CPU mini, wiki_sample, S = 64)", "block_len",
              dict(MINI, attn_type="vq", agg_cache=True, n_code=64), 64, paper.TABLE_NOTES["block"]),
    TableSpec("mini_lm_compare", "LongVQ vs Transformer-VQ vs LongVQ without its SSM (CPU mini, wiki_sample, "
              "~1.9M parameters each)", "variant", dict(tags="mini", data="wiki_sample", sequence_len=1024),
              "longvq/ssm=ema", paper.TABLE_NOTES["lm_compare"], predicted={"longvq/ssm=none": "worse"}),
    TableSpec("enwik8", "enwik8, 190M: Transformer-VQ and the quadratic baseline", "attn_type",
              dict(data="enwik8", n_code=512, block_len=512, agg_cache=True), "vq", paper.TABLE_NOTES["enwik8"]),
    TableSpec("ablation_codebook", "enwik8 codebook-size ablation", "n_code",
              dict(data="enwik8", attn_type="vq", agg_cache=True, block_len=512), 512, paper.TABLE_NOTES["codebook"],
              predicted={256: "worse", 1024: "better"}, paper_effect=paper.CODEBOOK_STEP_BPB),
    TableSpec("ablation_cache", "enwik8 compressive-cache ablation (S = 256)", "agg_cache",
              dict(data="enwik8", attn_type="vq", n_code=256, block_len=512), True, paper.TABLE_NOTES["cache"],
              predicted={False: "worse"}, paper_effect=paper.CACHE_VAL_BPB[False] - paper.CACHE_VAL_BPB[True]),
]

def arms(spec: TableSpec, records: list[dict]) -> dict:
    """Arm value -> its records (one per seed; a seed seen twice keeps the run with more steps)."""
    out: dict = {}
    for rec in records:
        if spec.selects(rec):
            seeds = out.setdefault(rec[spec.vary], {})
            old = seeds.get(rec["seed"])
            if old is None or (rec["step"] or 0) > (old["step"] or 0):
                seeds[rec["seed"]] = rec
    def order(kv):   # numbers in numeric order (S, L), everything else by name
        return (0, kv[0], "") if isinstance(kv[0], (int, float)) else (1, 0, str(kv[0]))
    return {arm: list(seeds.values()) for arm, seeds in sorted(out.items(), key=order)}


def summarize(spec: TableSpec, records: list[dict]) -> list[dict]:
    """One row per arm: mean and spread over seeds, the difference to the reference arm (the mean paired
    difference, over the seeds both ran), and a verdict.

    The runs of one seed share data order and initialisation across arms, so the comparison is the paired
    difference seed by seed, with a 95% t confidence interval over seeds. The verdict: *agrees* / *disagrees*
    with the direction predicted before running when the interval excludes zero (*worse* / *better* for an
    arm with no prediction), *unresolved* when it does not. ``resolves`` says whether the interval is
    narrower than the paper's effect, i.e. whether these runs could have told the paper's effect from none."""
    groups = arms(spec, records)
    rows = []
    for arm, recs in groups.items():
        vals = [r["val_bpb"] for r in recs]
        rows.append({"arm": arm, "seeds": len(vals), "steps": min(r["step"] or 0 for r in recs),
                     "mean": statistics.fmean(vals), "min": min(vals), "max": max(vals),
                     "std": statistics.stdev(vals) if len(vals) > 1 else float("nan"),
                     "_by_seed": {r["seed"]: r["val_bpb"] for r in recs}})
    ref = next((r for r in rows if r["arm"] == spec.reference), None)
    by_seed = {r["arm"]: r.pop("_by_seed") for r in rows}
    for r in rows:
        r["ci"], r["predicted"], r["resolves"] = "", spec.predicted.get(r["arm"], ""), ""
        if ref is None or r is ref:
            r["delta"], r["paired"], r["verdict"] = float("nan"), "", "reference" if r is ref else ""
            continue
        mine, base = by_seed[r["arm"]], by_seed[ref["arm"]]
        paired = [mine[k] - base[k] for k in sorted(mine) if k in base]
        # over the seeds both arms ran: a reference with more seeds than the arm must not shift the delta
        r["delta"] = statistics.fmean(paired) if paired else r["mean"] - ref["mean"]
        r["paired"] = " ".join(f"{d:+.4f}" for d in paired)
        if len(paired) < 2:
            r["verdict"] = "one seed: no noise estimate"
            continue
        lo, hi = paired_ci(paired)
        r["ci"] = f"[{lo:+.4f}, {hi:+.4f}]"
        if spec.paper_effect is not None:
            r["resolves"] = "yes" if hi - lo < spec.paper_effect else "no"
        if lo <= 0 <= hi:
            r["verdict"] = "unresolved"
            continue
        seen = "worse" if lo > 0 else "better"
        r["verdict"] = (("agrees" if seen == r["predicted"] else "disagrees") + f" ({seen})") if r["predicted"] else seen
    return rows


COLUMNS = ["arm", "seeds", "steps", "mean", "std", "min", "max", "delta", "paired", "ci", "predicted",
           "verdict", "resolves"]


def columns(rows: list[dict]) -> list[str]:
    """COLUMNS, plus ``band`` where results/expected.py judged the rows against a full run's expected number."""
    return COLUMNS + (["band"] if rows and "band" in rows[0] else [])


def to_markdown(spec: TableSpec, rows: list[dict]) -> str:
    head = (f"### {spec.title}\n\nvalidation bits per byte (lower is better), mean over seeds; "
            f"delta against {spec.vary} = {spec.reference}, over the seeds both ran; paired = the same difference "
            f"seed by seed, ci = its 95% t interval; predicted = the direction fixed before running; resolves = "
            f"the interval is narrower than the paper's effect"
            + (f" ({spec.paper_effect:.3f} bpb)" if spec.paper_effect is not None else " (none given)")
            + f". Paper: {spec.paper}.\n\n")
    if not rows:
        return head + "_no finished runs found_\n"
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) and v == v else ("–" if isinstance(v, float) else str(v))
    cols = columns(rows)
    lines = [f"| {spec.vary} | " + " | ".join(cols[1:]) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return head + "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns(rows))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
