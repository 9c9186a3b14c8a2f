"""The report's front page in sentences (issue 33): where the visual heads sit, how concentrated they are, what
masking them costs against random and bottom heads, and how the models compare, each sentence computed from a mart
(``report_story_heads``, ``report_story_masking``; the models compared at a share of heads on the masking page's
``report_masking``) with its numbers, and linked to the figure it describes. Nothing is written by hand but the wording."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping

from attnwh.queries.library import Catalog, get_mart, run_mart
from attnwh.queries.rankings import ATTRIBUTION_SCORE, IMPORTED_SCORE
from attnwh.reports.page import Section, Sentence
from attnwh.warehouse.definitions import heads_at_share

TITLE = "In sentences"
DESCRIPTION = "What the warehouse shows, computed from its marts each time the report is built (the SQL is below); each sentence links to its figure."
TOP_HEADS = 10  # the visual heads the sentences describe: each run's best by mean concentration × sum
STAGES = ("early", "mid", "late")


def section(session: Catalog, figure_href: Mapping[str, str], query: str = "gen1") -> Section:
    """The front page's sentences; ``figure_href``: a chart's name -> its page and anchor."""
    heads = run_mart(session, "report_story_heads", {"query": query, "k": str(TOP_HEADS)}).to_pylist()
    masking = run_mart(session, "report_story_masking").to_pylist()
    curves = run_mart(session, "report_masking").to_pylist()
    sentences = []
    for row in heads:
        sentences += head_sentences(row, query, figure_href)
    for row in masking:
        sentences.append(Sentence(masking_sentence(row), figure_href.get("masking_curves", "masking.html"), "masking curves"))
    sentences += comparison_sentences(heads, curves, figure_href)
    sql = "\n\n".join(get_mart(name).sql for name in ("report_story_heads", "report_story_masking", "report_masking"))
    return Section(TITLE, DESCRIPTION, sql, sentences=sentences or None, empty_message="No extraction run in the warehouse yet.")


def _percent(value: float, digits: int = 0) -> str:
    return f"{100 * value:.{digits}f}%"


def _percents(*values: float) -> list[str]:
    """The values as percentages with the fewest decimals (up to two) that keep unequal values apart, so that two
    accuracies that differ never read "from 100% to 100%"."""
    for digits in range(3):
        texts = [_percent(value, digits) for value in values]
        if all(texts[i] != texts[j] for i in range(len(values)) for j in range(i) if values[i] != values[j]):
            return texts
    return texts


def _interval(low: float, high: float) -> str:
    return f"[{_percent(low)}, {_percent(high)}]"


def _where(shares: Mapping[str, float]) -> str:
    """'mostly in the late layers', 'most often in the mid layers', or a tie said as one: 'as often in the mid as in
    the late layers'."""
    top = max(shares.values())
    first = [stage for stage in STAGES if shares[stage] == top]
    if len(first) > 1:
        return f"as often in the {' as in the '.join(first)} layers"
    return f"{'mostly' if top > 0.5 else 'most often'} in the {first[0]} layers"


def head_sentences(row: dict, query: str, figure_href: Mapping[str, str]) -> list[Sentence]:
    shares = {stage: row[f"{stage}_share"] for stage in STAGES}
    where = (
        f"{row['model']} on {row['benchmark']} (run {row['run_id']}): its {row['n_top']} most visual heads of {row['n_heads_all']} "
        f"(mean concentration × sum, {query}) sit {_where(shares)} "
        f"({', '.join(f'{_percent(shares[stage])} {stage}' for stage in STAGES)} "
        f"of {row['n_layers']} layers, whose stages hold {', '.join(_percent(row[f'{stage}_share_all']) for stage in STAGES)} of all heads), "
        f"at mean depth {row['top_depth']:.2f} (0: the first layer, 1: the last)."
    )
    sentences = [Sentence(where, figure_href.get("head_concentration_x_sum", "attention.html"), "heads by layer")]
    if row["top_concentration"] is not None and row["all_concentration"]:
        ratio = row["top_concentration"] / row["all_concentration"]
        focus = (
            f"They are {ratio:.1f} times as concentrated as the average head (concentration {row['top_concentration']:.2f} against "
            f"{row['all_concentration']:.2f}) and give the image {_percent(row['top_image_sum'])} of their attention against "
            f"{_percent(row['all_image_sum'])} for the average head."
        )
        sentences.append(Sentence(focus, figure_href.get("sum_vs_concentration", "attention.html"), "sum against concentration"))
    return sentences


def _ranking(score: str | None) -> str:
    """What ranked a mask run's heads, in words (nothing where the run recorded no ranking)."""
    if not score:
        return ""
    return ", heads ranked by " + {ATTRIBUTION_SCORE: "causal attribution", IMPORTED_SCORE: "an imported ranking"}.get(score, f"attention ({score})")


def masking_sentence(row: dict) -> str:
    names = [name for name in ("baseline_accuracy", "top_accuracy", "random_accuracy", "bottom_accuracy") if row[name] is not None]
    shown = dict(zip(names, _percents(*(row[name] for name in names))))
    baseline = f"{shown['baseline_accuracy']} {_interval(row['baseline_ci_low'], row['baseline_ci_high'])}"
    moved = "leaves accuracy at " + baseline
    if row["baseline_accuracy"] != row["top_accuracy"]:
        moved = f"moves accuracy from {baseline} to {shown['top_accuracy']} {_interval(row['top_ci_low'], row['top_ci_high'])}"
    incomplete = "" if row.get("complete", True) else f", incomplete: {row['parts_committed']} of {row['n_parts']} parts committed"
    masked = f"its top {row['k']} heads"
    if row.get("whole_stage"):  # top and bottom are the same heads: every head of the stage
        masked = f"all {row['k']} heads" + ("" if row["stage"] == "all" else f" of its {row['stage']} layers")
    text = (
        f"{row['model']} on {row['benchmark']} (mask run {row['run_id']}{_ranking(row.get('ranking_score'))}{incomplete}): "
        f"masking {masked} ({_percent(row['fraction'])} of all, {row['stage']} layers, {row['mode']} mode) {moved}"
    )
    if row["random_accuracy"] is not None:
        text += (
            f"; {row['k']} random heads give {shown['random_accuracy']} (mean of {row['random_seeds']} seed(s), "
            f"{_percent(row['random_accuracy_min'])} to {_percent(row['random_accuracy_max'])})"
        )
    if row["bottom_accuracy"] is not None:
        text += f"; the bottom {row['k']}, {shown['bottom_accuracy']} {_interval(row['bottom_ci_low'], row['bottom_ci_high'])}"
    whose = "their" if row.get("whole_stage") else "the top heads'"
    if row["top_ci_high"] < row["baseline_ci_low"]:
        text += f"; {whose} interval lies below the baseline's"
    elif row["top_ci_low"] <= row["baseline_ci_high"]:
        text += f"; {whose} interval overlaps the baseline's"
    return text + "."


COMPARED_MODE = "zero"  # the masking mode the models are compared in (masking every layer's top heads)


def masking_costs(curves: list[dict], benchmark: str) -> dict[str, dict[float, tuple[int, float]]]:
    """Per model, from the masking page's curves (``report_masking``: one mask run ranked by attention per model, benchmark
    and mode): at each share of heads its top heads were masked at (every stage, ``COMPARED_MODE``), k and the
    accuracy less the run's unmasked baseline's."""
    top = [row for row in curves if row["benchmark"] == benchmark and row["strategy"] == "top" and row["stage"] == "all" and row["mode"] == COMPARED_MODE]
    baseline = {row["model"]: row["accuracy"] for row in top if row["k"] == 0}
    costs: dict[str, dict[float, tuple[int, float]]] = {}
    for row in top:
        if row["k"] > 0 and row["model"] in baseline:
            costs.setdefault(row["model"], {})[round(row["fraction"], 6)] = (row["k"], row["accuracy"] - baseline[row["model"]])
    return costs


def _rounded_to(k: int, fraction: float) -> tuple[float, float]:
    """The shares of all heads whose nearest whole head count is ``k`` heads of this model (``fraction`` = k / its
    heads, rounded to 6 places by ``masking_costs``: the head count is the whole number nearest k / fraction): the
    half-open [(k − ½) / H, (k + ½) / H), so that neighbouring counts of one model never share a share."""
    heads = _heads(k, fraction)
    return (k - 0.5) / heads, (k + 0.5) / heads


def _heads(k: int, fraction: float) -> int:
    """A model's heads, from a count masked and its share of them (``masking_costs`` rounds the share to 6 places)."""
    return round(k / fraction)


def _named_share(low: float, high: float, fractions: list[float], masks: Callable[[float], bool]) -> float | None:
    """The share to name for the range of shares [low, high) that the models' masked ``fractions`` round from: the
    fractions' own where they are one, else the one with the fewest decimals (as a percentage) nearest their mean
    at which ``--k`` masks each model's count (``masks``: a half-head tie goes to the even count, so an end of the
    range may not); None where no share is found."""
    if len(set(fractions)) == 1:
        return fractions[0]
    centre = sum(fractions) / len(fractions)
    for digits in range(3):
        step = 10 ** -(digits + 2)
        candidates = [round(step * count, digits + 2) for count in range(math.ceil(round(low / step, 9)), math.floor(round(high / step, 9)) + 1)]
        candidates = [candidate for candidate in candidates if low <= candidate < high and masks(candidate)]
        if candidates:
            return min(candidates, key=lambda candidate: abs(candidate - centre))
    return centre if masks(centre) else None


def shared_shares(costs: dict[str, dict[float, tuple[int, float]]]) -> list[tuple[float, dict[str, float]]]:
    """The shares of all heads every model was masked at, to the nearest whole head: (the share named, model -> the
    fraction of its heads masked there), largest first. 26 of 128, 14 of 72 and 6 of 32 heads are each the nearest
    whole heads to 20% (as ``--k 0.2`` masks them), so three models are compared there; 2 of 64 and 8 of 32 are not,
    nor 10 and 11 of 1,024. Each model's ranges are disjoint, so the ranges all models share are intersected model
    by model in one pass over sorted lists (no search over combinations)."""
    ranges: list[tuple[float, float, dict[str, float]]] = [(0.0, 1.0, {})]
    for model in sorted(costs):
        own = sorted((*_rounded_to(k, fraction), fraction) for fraction, (k, _) in costs[model].items())
        ranges = [
            (max(low, start), min(high, stop), {**chosen, model: fraction}) for low, high, chosen in ranges for start, stop, fraction in own if max(low, start) < min(high, stop)
        ]

    def masks(chosen: dict[str, float]) -> Callable[[float], bool]:
        """Whether ``--k share`` masks, in each chosen model, the count it was masked at there."""
        counts = {model: costs[model][fraction][0] for model, fraction in chosen.items()}
        sizes = {model: _heads(counts[model], fraction) for model, fraction in chosen.items()}
        return lambda share: all(heads_at_share(share, sizes[model]) == count for model, count in counts.items())

    found = [(share, chosen) for low, high, chosen in ranges if (share := _named_share(low, high, list(chosen.values()), masks(chosen))) is not None]
    return sorted(found, key=lambda item: item[0], reverse=True)


def cost_comparison(costs: dict[str, dict[float, tuple[int, float]]]) -> str:
    """What masking the top heads costs each model at the largest share of heads all of them were masked at (to the
    nearest whole head, as ``--k`` rounds a fraction), k named per model; where they share none, says so with each
    model's shares rather than set unlike shares side by side."""
    shared = shared_shares(costs)
    if not shared:
        shares = "; ".join(f"{model}: {', '.join(_percent(share) for share in sorted(by_share))}" for model, by_share in sorted(costs.items()))
        return f"; what masking the top heads costs each is not compared: their mask runs masked them at no common share of all heads ({shares})"
    share, fractions = shared[0]
    ordered = sorted((costs[model][fractions[model]][1], model) for model in costs)
    ks = ", ".join(f"{costs[model][fractions[model]][0]} in {model}" for model in sorted(costs))
    rounded = "" if len(set(fractions.values())) == 1 else ", the nearest whole heads"
    return (
        f"; masking the top {_percent(share)} of heads ({ks}{rounded}; {COMPARED_MODE} mode) costs {ordered[0][1]} the most ({100 * ordered[0][0]:+.0f} points) "
        f"and {ordered[-1][1]} the least ({100 * ordered[-1][0]:+.0f} points)"
    )


def comparison_sentences(heads: list[dict], curves: list[dict], figure_href: Mapping[str, str]) -> list[Sentence]:
    """Per benchmark with two models or more: where their visual heads sit (the run each model's panels show:
    ``report_story_heads``), and what masking them costs each at a share of heads they were all masked at (the
    masking page's runs, ranked by attention: ``report_masking``)."""
    sentences = []
    by_benchmark = defaultdict(list)
    for row in heads:
        by_benchmark[row["benchmark"]].append(row)
    for benchmark, rows in by_benchmark.items():
        if len({row["model"] for row in rows}) < 2:
            continue
        ordered = sorted(rows, key=lambda row: row["top_depth"])
        text = (
            f"Across models on {benchmark}, the visual heads sit deepest in {ordered[-1]['model']} (mean depth {ordered[-1]['top_depth']:.2f}) "
            f"and shallowest in {ordered[0]['model']} ({ordered[0]['top_depth']:.2f})"
        )
        costs = masking_costs(curves, benchmark)
        if len(costs) >= 2:
            text += cost_comparison(costs)
        sentences.append(Sentence(text + ".", figure_href.get("layer_concentration_x_sum", "layers.html"), "profiles by depth"))
    return sentences


def figure_hrefs(pages: Mapping[str, tuple[str, list]]) -> dict[str, str]:
    """Each named chart's page and anchor (``page.Section`` ids are their place on the page), the front page's aside."""
    return {
        section.name: f"{name}#section-{index}"
        for name, (_, sections) in pages.items()
        if name != "index.html"
        for index, section in enumerate(sections)
        if getattr(section, "name", None)
    }


REPEATED_TITLE = "Benchmarks that ask the same questions"


def repeated_sections(session: Catalog) -> list[Section]:
    """The masking page's note on benchmarks whose extractions asked a model the same questions (``repeated_questions``):
    one sweep answers for both, and the page says which one was swept (none when no pair)."""
    sentences = []
    for row in run_mart(session, "repeated_questions").to_pylist():
        if row["benchmark"] > row["same_as"] or not (row["benchmark_swept"] or row["same_as_swept"]):
            continue  # each pair once; a pair neither of which was swept needs no word here
        first, second = (row["benchmark"], row["same_as"]) if row["benchmark_swept"] else (row["same_as"], row["benchmark"])
        text = f"{row['model']}: {second} asks the same {row['n_samples']} questions as {first} (sample keys, questions, options and gold answers); "
        if row["benchmark_swept"] and row["same_as_swept"]:
            text += "both were swept, so their masking results repeat one another."
        else:
            text += f"only {first} was swept: its masking results stand for {second} too."
        sentences.append(Sentence(text, "#section-0", "masking curves"))
    if not sentences:
        return []
    return [Section(REPEATED_TITLE, "Computed from the questions each extraction asked.", get_mart("repeated_questions").sql, sentences=sentences)]
