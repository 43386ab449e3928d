"""`llm-jax sweep report`: compare the variants of an experiment from their runs' TensorBoard event files.

Writes <experiment dir>/report.md (a Markdown table: final and best of each metric, tokens/s and parameter count,
mean ± std over the finished seeds) and one PNG per metric (the metric against steps and against tokens, every
variant on one figure: the mean over seeds, with the spread between seeds shaded).
"""

import dataclasses
import datetime
import math
import pathlib
import statistics

from llm_jax.monitor.events import read_run
from llm_jax.sweep.experiment import ExperimentError, Run, Sweep

HIGHER_IS_BETTER = ("eval/accuracy",)


@dataclasses.dataclass
class RunResult:
    run: Run
    finished: bool
    series: dict[str, dict[int, float]]  # tag -> step -> value
    tokens_per_s: float  # the median over the run's logging windows (compilation excluded)
    num_params: float
    tokens_per_step: int

    def final(self, tag: str) -> float:
        values = self.series.get(tag, {})
        return values[max(values)] if values else math.nan

    def best(self, tag: str) -> float:
        """The lowest value of a loss, the highest of a metric where higher is better (accuracy)."""
        pick = max if tag in HIGHER_IS_BETTER else min
        return pick(self.series.get(tag, {}).values(), default=math.nan)


def collect(sweep: Sweep) -> dict[str, list[RunResult]]:
    """variant -> the results of its runs that have event files, in seed order."""
    out: dict[str, list[RunResult]] = {name: [] for name in sweep.variants}
    for run in sweep.runs:
        tb = run.workdir / "tensorboard"
        if not tb.is_dir():
            continue
        events = read_run(tb)
        hp = events.hparams
        speeds = list(events.scalars.get("train/tokens_per_s", {}).values())
        tokens_per_step = int(hp.get("train.global_batch", 0)) * int(hp.get("train.seq_len", 0))
        out[run.variant].append(RunResult(run, events.finished, events.scalars,
                                          statistics.median(speeds) if speeds else math.nan,
                                          float(hp.get("num_params", math.nan)), tokens_per_step))
    return out


def mean_std(values: list[float], digits: int = 4, thousands: bool = False) -> str:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "—"
    fmt = (lambda v: f"{v:,.0f}") if thousands else (lambda v: f"{v:.{digits}f}")
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.mean(values))} ± {fmt(statistics.stdev(values))}"


def _params(values: list[float]) -> str:
    values = [v for v in values if math.isfinite(v)]
    return f"{statistics.mean(values) / 1e6:.3f}M" if values else "—"


def table(sweep: Sweep, results: dict[str, list[RunResult]]) -> str:
    """The Markdown comparison table; the best mean final value of the headline metric is in bold."""
    metrics = list(sweep.spec.metrics)
    head = ["variant", "overrides", "finished"]
    for m in metrics:
        head += [f"final {m}", f"best {m}"]
    head += ["tokens/s", "params"]
    finished = {v: [r for r in rs if r.finished] for v, rs in results.items()}
    means = {v: statistics.mean([r.final(metrics[0]) for r in rs]) for v, rs in finished.items() if rs}
    best = (max if metrics[0] in HIGHER_IS_BETTER else min)(means, key=means.get) if means else None
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, own in sweep.variants.items():
        rs = finished[variant]
        overrides = ", ".join(f"`{k}={v}`" for k, v in own.items()) or "(base)"
        row = [variant, overrides, f"{len(rs)}/{len(sweep.spec.seeds)}"]
        for m in metrics:
            final = mean_std([r.final(m) for r in rs])
            row += [f"**{final}**" if variant == best and m == metrics[0] and len(means) > 1 else final,
                    mean_std([r.best(m) for r in rs])]
        row += [mean_std([r.tokens_per_s for r in rs], thousands=True), _params([r.num_params for r in rs])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _curves(rs: list[RunResult], tag: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps every run logged `tag` at, and the mean, min and max over the runs there."""
    steps = sorted(set.intersection(*(set(r.series.get(tag, {})) for r in rs))) if rs else []
    rows = [[r.series[tag][s] for r in rs] for s in steps]
    return steps, [statistics.mean(x) for x in rows], [min(x) for x in rows], [max(x) for x in rows]


def plot(sweep: Sweep, results: dict[str, list[RunResult]], tag: str) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, (by_step, by_tokens) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for variant, rs in results.items():
        rs = [r for r in ([r for r in rs if r.finished] or rs) if tag in r.series]  # unfinished: only if all are
        steps, mean, low, high = _curves(rs, tag)
        if not steps:
            continue
        tokens = [s * rs[0].tokens_per_step for s in steps]
        label = f"{variant} ({len(rs)} seed{'s' if len(rs) > 1 else ''})"
        for ax, x in ((by_step, steps), (by_tokens, tokens)):
            (line,) = ax.plot(x, mean, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
            if len(rs) > 1:
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    by_step.set_xlabel("step")
    by_tokens.set_xlabel("tokens")
    by_step.set_ylabel(tag)
    for ax in (by_step, by_tokens):
        ax.grid(alpha=0.3)
    by_step.legend()
    fig.suptitle(f"{sweep.name}: {tag} (mean over seeds; shaded: min to max)")
    fig.tight_layout()
    path = sweep.directory / f"{tag.replace('/', '_')}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(sweep: Sweep) -> tuple[pathlib.Path, list[pathlib.Path], str]:
    """Write report.md and the plots into the experiment directory; return their paths and the table."""
    results = collect(sweep)
    if not any(results.values()):
        raise ExperimentError(f"no runs of {sweep.path} under {sweep.directory} yet; run llm-jax sweep run "
                              f"{sweep.path} first (with the same --root)")
    text = table(sweep, results)
    plots = [plot(sweep, results, tag) for tag in sweep.spec.metrics]
    unfinished = [r.run.name for rs in results.values() for r in rs if not r.finished]
    spec = sweep.spec
    md = [f"# {sweep.name}", "", spec.description or "", "",
          f"Config `{spec.config}`" + (", with " + ", ".join(f"`{k}={v}`" for k, v in spec.base.items())
                                        if spec.base else "") + f"; seeds {list(spec.seeds)}. Defined in "
          f"`{sweep.path}`; report written {datetime.datetime.now().isoformat(timespec='seconds')}.", "",
          text, "", "Mean ± standard deviation over the finished seeds; tokens/s is each run's median over its "
          "logging windows."]
    if unfinished:
        md += ["", "Not finished (left out of the table; plotted only for a variant with no finished run): "
               f"{', '.join(unfinished)}."]
    md += [""] + [f"![{tag}]({p.name})" for tag, p in zip(spec.metrics, plots, strict=True)]
    md += ["", f"All runs side by side: `tensorboard --logdir={sweep.directory}`", ""]
    path = sweep.directory / "report.md"
    path.write_text("\n".join(md))
    return path, plots, text
