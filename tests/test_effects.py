"""Effects per factor: each statistic checked against an independent computation (scipy, a hand
computation, statsmodels' OLS with HC2), the error rate shown by simulation with known truth, and
the command on run folders the test writes, ragged ones included.

The simulated cells have what real seeds have: images of varied difficulty scored by every run,
per-image disagreement between seeds, and a run-level shift per seed whose size differs between
cells, so that the cells' seed SDs span 10x.
"""

import csv
import importlib
import json
import math
import pkgutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats
from test_verdicts import tolerance  # three binomial SEs of a simulated rate

import densenet_exp.runs
from densenet_exp.runs import configurations, find_runs, power
from densenet_exp.runs.compare import Options, compare
from densenet_exp.runs.configs import Configuration
from densenet_exp.runs.effects import INTERACTION, MAIN, SIMPLE, contrasts, effects
from densenet_exp.runs.grid import Grid
from densenet_exp.runs.records import Run
from densenet_exp.runs.stats import contrast, welch
from densenet_exp.runs.verdicts import Verdict, holm_decisions, look_alphas, look_decisions
from densenet_exp.sweeps import extend as extend_module
from densenet_exp.sweeps import finish_sweep
from densenet_exp.sweeps.cli import main

ALPHA = 0.05
REPS = 1000
N_IMAGES = 1000


class Cells:
    """Seeds of a grid's cells on one validation set: per-image difficulty (logits; ~70% top-1,
    seeds disagreeing on ~15% of the images), per-image Bernoulli outcomes, and a run-level shift
    in top-1 whose SD is set per cell so that the cell's whole seed SD is ``sds[k]``."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.p = 1 / (1 + np.exp(-rng.normal(2.5, 4.5, N_IMAGES)))
        self.floor = math.sqrt(float(np.sum(self.p * (1 - self.p)))) / N_IMAGES

    def correct(self, reps: int, seeds: int) -> np.ndarray:
        return self.rng.random((reps, seeds, N_IMAGES), dtype=np.float32) < self.p

    def top1(self, reps: int, sds: np.ndarray, seeds: int, means=None) -> np.ndarray:
        """(reps, cells, seeds) of final top-1; ``means`` adds a true effect per cell."""
        out = np.empty((reps, len(sds), seeds))
        for k, sd in enumerate(sds):
            images = np.concatenate(
                [self.correct(100, seeds).mean(axis=2) for _ in range(0, reps, 100)]
            )[:reps]
            shift = self.rng.normal(0, math.sqrt(max(sd**2 - self.floor**2, 0)), (reps, seeds))
            out[:, k] = images + shift + (0.0 if means is None else means[k])
        return out


def fake_grid(shape: tuple[int, ...]) -> Grid:
    """A full grid of ``shape`` (factors f0, f1, ...; levels l0, l1, ...; reference l0) whose
    cells are configurations with a finished run each: what ``contrasts`` reads."""
    grid = Grid()
    grid.factors = [f"f{i}" for i in range(len(shape))]
    grid.levels = [[f"l{j}" for j in range(s)] for s in shape]
    grid.reference = [levels[0] for levels in grid.levels]
    for cell in np.ndindex(*shape):
        key = tuple(f"l{j}" for j in cell)
        grid.cells[key] = Configuration(
            grid.name(key), [Run(Path("x"), summary={"status": "completed"})]
        )
    return grid


def family_decisions(grid: Grid, rows, values: dict, d: float = 0.01):
    """What ``effects`` does with one fixed-sample grid: a Welch-Satterthwaite contrast per main
    effect and interaction, Holm over all of them (``test_the_command_is_the_family_computed_
    here`` holds ``effects`` to this)."""
    family = [r for r in rows if r.kind != SIMPLE]
    tests = [contrast([values[c] for c in r.coefs], list(r.coefs.values())) for r in family]
    if any(t is None for t in tests):
        return None
    return holm_decisions(tests, ALPHA, d)


def spread_sds(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Cell seed SDs spanning 10x (0.01 to 0.1), in a random order over the cells."""
    return rng.permutation(np.geomspace(0.01, 0.1, cells))


def test_the_simulated_cells_look_like_real_seeds():
    sim = Cells(np.random.default_rng(0))
    c = sim.correct(1, 10)[0]
    pairs = [np.mean(c[i] != c[j]) for i in range(10) for j in range(i + 1, 10)]
    assert 0.10 <= np.mean(pairs) <= 0.20  # seeds disagree on a share of the images
    x = sim.top1(2000, np.array([0.01, 0.1]), 1)
    sds = x[:, :, 0].std(axis=0)
    assert sds[1] / sds[0] == pytest.approx(10, rel=0.1)  # the spreads span 10x
    assert 0.6 < x.mean() < 0.8 and sim.floor < 0.01


@pytest.mark.parametrize("shape", [(2, 2), (2, 3), (2, 2, 2)])
@pytest.mark.parametrize("seeds", [2, 3, 5, 10])
def test_a_grid_of_identical_configurations_gets_a_verdict_at_most_5_percent_of_the_time(
    shape, seeds
):
    rng = np.random.default_rng(100 * len(shape) + 10 * shape[-1] + seeds)
    grid = fake_grid(shape)
    rows = contrasts(grid)
    cells = list(grid.cells)
    sds = spread_sds(rng, len(cells))
    x = Cells(rng).top1(REPS, sds, seeds)
    called = []
    for r in range(REPS):
        decisions = family_decisions(grid, rows, {c: x[r, k] for k, c in enumerate(cells)})
        called.append(any(d.verdict in (Verdict.better, Verdict.worse) for d in decisions))
    rate = float(np.mean(called))
    assert rate <= ALPHA + tolerance(ALPHA, REPS), rate


@pytest.mark.parametrize("looks", [[2, 4, 8], [3, 6, 12]])
def test_planned_looks_by_effects_keep_the_rate(looks):
    """``extend --by effects``: every cell gets the same seeds, each look tests the family's open
    effects on the first n seeds at its share of the O'Brien-Fleming spending."""
    rng = np.random.default_rng(sum(looks))
    grid = fake_grid((2, 3))
    family = [r for r in contrasts(grid) if r.kind != SIMPLE]
    cells = list(grid.cells)
    reps = 600
    x = Cells(rng).top1(reps, spread_sds(rng, len(cells)), looks[-1])
    alphas = look_alphas(looks, ALPHA)

    def any_false_verdict(r: int) -> bool:
        for n, spend in zip(looks, alphas):
            level = spend / (2 * len(family))
            for row in family:  # with no effect anywhere, every effect stays open to the end
                values = [x[r, cells.index(c), :n] for c in row.coefs]
                t = contrast(values, list(row.coefs.values()))
                if look_decisions([t], level, ALPHA, 0.0)[0].verdict != Verdict.undecided:
                    return True
        return False

    rate = np.mean([any_false_verdict(r) for r in range(reps)])
    assert rate <= ALPHA + tolerance(ALPHA, reps), rate


def test_power_is_the_noncentral_t_at_the_contrasts_df_and_the_planned_seeds_reach_80_percent():
    rng = np.random.default_rng(21)
    grid = fake_grid((2, 3))
    conv = next(r for r in contrasts(grid) if r.kind == MAIN and r.factor == "f0")
    coefs = [conv.coefs[c] for c in grid.cells]
    sd, effect, reps = 0.02, 0.02, 3000
    level = ALPHA / 10  # Holm's first step over the 5 effects' 10 one-sided hypotheses
    weights = [c * c * sd * sd for c in coefs]
    planned = power.seeds_per_cell(weights, effect, level)
    for n in (10, planned):
        x = rng.normal(0.9, sd, (reps, 6, n)) + effect * (np.array(coefs) > 0)[None, :, None]
        found = np.mean([contrast(list(x[r]), coefs).p_greater() <= level for r in range(reps)])
        # the closed form: noncentral t with df = 5 (n - 1) x ... = 6 (n - 1) at equal spreads
        closed = stats.nct.sf(
            stats.t.ppf(1 - level, 6 * (n - 1)), 6 * (n - 1), effect / (sd * math.sqrt(2 / (3 * n)))
        )
        assert power.contrast_power(n, weights, effect, level) == pytest.approx(closed)
        assert found == pytest.approx(closed, abs=tolerance(0.8, reps) + 0.01), (n, found)
    assert found >= 0.8 - tolerance(0.8, reps)
    assert power.contrast_power(planned - 1, weights, effect, level) < 0.8


def test_all_intervals_of_a_table_cover_the_true_effects_together():
    rng = np.random.default_rng(31)
    grid = fake_grid((2, 3))
    rows = contrasts(grid)
    family = [r for r in rows if r.kind != SIMPLE]
    cells = list(grid.cells)
    # true cell means: a main effect of f0, one of f1=l2, and an interaction at (l1, l1)
    means = {c: 0.03 * (c[0] == "l1") + 0.02 * (c[1] == "l2") for c in cells}
    means[("l1", "l1")] += 0.04
    truth = [sum(v * means[c] for c, v in r.coefs.items()) for r in family]
    reps = 1000
    x = Cells(rng).top1(reps, spread_sds(rng, 6) / 2, 5, [means[c] for c in cells])
    covered = []
    for r in range(reps):
        decisions = family_decisions(grid, rows, {c: x[r, k] for k, c in enumerate(cells)})
        inside = []
        for d, t in zip(decisions, truth):
            low_ok = t > 0 if d.verdict == Verdict.better else t >= d.low
            high_ok = t < 0 if d.verdict == Verdict.worse else t <= d.high
            inside.append(low_ok and high_ok)
        covered.append(all(inside))
    assert np.mean(covered) >= 1 - ALPHA - tolerance(ALPHA, reps)


# -- the statistics against independent computations ---------------------------------------------
def test_a_two_cell_contrast_is_welchs_test_as_scipy_computes_it():
    a, b = np.array([0.91, 0.93, 0.96]), np.array([0.95, 0.94, 0.97, 0.99])
    t = contrast([a, b], [-1.0, 1.0])
    scipy_welch = stats.ttest_ind(b, a, equal_var=False)
    assert t.delta / t.se == pytest.approx(scipy_welch.statistic)
    assert t.df == pytest.approx(scipy_welch.df) and t.p_two == pytest.approx(scipy_welch.pvalue)
    assert welch(a, b).se == pytest.approx(t.se)


def test_a_main_effect_and_an_interaction_are_the_hand_computed_contrasts():
    rng = np.random.default_rng(41)
    # a ragged 2x3 grid: 3, 4, 2, 5, 3, 3 seeds
    cells = [
        rng.normal(0.9, s, n)
        for s, n in zip([0.01, 0.02, 0.005, 0.03, 0.01, 0.02], [3, 4, 2, 5, 3, 3])
    ]
    means = [x.mean() for x in cells]
    v = [x.var(ddof=1) / len(x) for x in cells]  # s_i^2 / n_i
    # conv main effect: (dsconv cells 3, 4, 5) - (standard cells 0, 1, 2), averaged over 3 acts
    c = [-1 / 3] * 3 + [1 / 3] * 3
    t = contrast(cells, c)
    a = [ci**2 * vi for ci, vi in zip(c, v)]
    df = sum(a) ** 2 / sum(ai**2 / (len(x) - 1) for ai, x in zip(a, cells))
    assert t.delta == pytest.approx((sum(means[3:]) - sum(means[:3])) / 3)
    assert t.se == pytest.approx(math.sqrt(sum(a))) and t.df == pytest.approx(df)
    # interaction of (dsconv, swish): cell 4 - cell 1 - cell 3 + cell 0
    t = contrast([cells[0], cells[1], cells[3], cells[4]], [1, -1, -1, 1])
    assert t.delta == pytest.approx(means[4] - means[1] - means[3] + means[0])
    assert t.se == pytest.approx(math.sqrt(v[0] + v[1] + v[3] + v[4]))


def test_in_a_balanced_grid_the_se_is_statsmodels_ols_with_hc2():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(42)
    n, sds = 4, [0.01, 0.03, 0.005, 0.02, 0.01, 0.04]
    cells = [rng.normal(0.9, s, n) for s in sds]
    y = np.concatenate(cells)
    design = np.kron(np.eye(6), np.ones((n, 1)))  # the saturated cell-means model
    fit = sm.OLS(y, design).fit(cov_type="HC2")
    for coefs in ([-1 / 3] * 3 + [1 / 3] * 3, [1, -1, 0, -1, 1, 0], [-0.5, 0.5, 0, -0.5, 0.5, 0]):
        ours = contrast(cells, coefs)
        theirs = fit.t_test(np.array([coefs]))
        assert ours.delta == pytest.approx(float(theirs.effect[0]))
        assert ours.se == pytest.approx(float(np.ravel(theirs.sd)[0]))  # HC2: Welch's variance


# -- the command on run folders -------------------------------------------------------------------
def fake_run(path: Path, levels: dict, seed: int, top1: float, status: str = "completed"):
    (path / ".hydra").mkdir(parents=True)
    overrides = [f"{k}={v}" for k, v in levels.items()] + [f"trainer.seed={seed}"]
    config = {k: {"name": v} for k, v in levels.items()} | {"trainer": {"seed": seed}}
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    choices = {"hydra": {"runtime": {"choices": dict(levels)}}}
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(choices))
    summary = {"status": status, "final_val_top1": top1 if status == "completed" else None}
    (path / "metrics.json").write_text(json.dumps(summary))


CONVS, ACTS = ("standard", "dsconv"), ("relu", "swish", "prelu")


def grid_folder(root: Path, values: dict, record: bool = True) -> Path:
    """values: {(conv, act): [top-1 per seed]} -> a sweep folder of finished runs."""
    root.mkdir(parents=True, exist_ok=True)
    if record:  # the sweep's defaults: conv=standard, act=relu
        (root / "multirun.yaml").write_text(
            yaml.safe_dump({"hydra": {"runtime": {"choices": {"conv": "standard", "act": "relu"}}}})
        )
    job = 0
    for (conv, act), tops in values.items():
        for seed, top in enumerate(tops):
            name = f"{job}_conv={conv},act={act},seed={seed}"
            fake_run(root / name, {"conv": conv, "act": act}, seed, top)
            job += 1
    return root


def seeds_of(rng, mean, sd, n=4):
    return list(rng.normal(mean, sd, n))


@pytest.fixture
def values():
    rng = np.random.default_rng(7)
    # dsconv +0.04 everywhere; prelu +0.03; no interaction; spreads differ
    sds = {"relu": 0.002, "swish": 0.004, "prelu": 0.0015}
    return {
        (c, a): seeds_of(rng, 0.85 + 0.04 * (c == "dsconv") + 0.03 * (a == "prelu"), sds[a])
        for c in CONVS
        for a in ACTS
    }


def test_the_command_is_the_family_computed_here(tmp_path, values):
    sweep = grid_folder(tmp_path / "sweep", values)
    result = effects(configurations(find_runs(sweep)), options=Options(min_effect=0.02))
    assert result.grid.factors == ["conv", "act"] and result.grid.reference == ["standard", "relu"]
    family = result.family
    assert [r.name for r in family] == [
        "conv=dsconv",
        "act=swish",
        "act=prelu",
        "conv=dsconv x act=swish",
        "conv=dsconv x act=prelu",
    ]
    cell = {k: np.array(v) for k, v in values.items()}
    by_hand = [
        (
            [cell[("dsconv", a)] for a in ACTS] + [cell[("standard", a)] for a in ACTS],
            [1 / 3] * 3 + [-1 / 3] * 3,
        ),
        (
            [cell[(c, "swish")] for c in CONVS] + [cell[(c, "relu")] for c in CONVS],
            [0.5, 0.5, -0.5, -0.5],
        ),
        (
            [cell[(c, "prelu")] for c in CONVS] + [cell[(c, "relu")] for c in CONVS],
            [0.5, 0.5, -0.5, -0.5],
        ),
        (
            [
                cell[("dsconv", "swish")],
                cell[("standard", "swish")],
                cell[("dsconv", "relu")],
                cell[("standard", "relu")],
            ],
            [1, -1, -1, 1],
        ),
        (
            [
                cell[("dsconv", "prelu")],
                cell[("standard", "prelu")],
                cell[("dsconv", "relu")],
                cell[("standard", "relu")],
            ],
            [1, -1, -1, 1],
        ),
    ]
    tests = [contrast(x, c) for x, c in by_hand]
    decisions = holm_decisions(tests, ALPHA, 0.02)
    for row, t, d in zip(family, tests, decisions):
        assert row.estimate == pytest.approx(t.delta)
        assert row.se == pytest.approx(t.se) and row.df == pytest.approx(t.df)
        assert row.verdict == d.verdict.value
        assert row.adjusted_p == pytest.approx(d.p_adjusted)
    verdicts = {r.name: r.verdict for r in family}
    assert verdicts["conv=dsconv"] == "better" and verdicts["act=prelu"] == "better"
    assert verdicts["conv=dsconv x act=swish"] == "equivalent"  # no interaction, shown small


def test_effects_csv_md_and_png_are_written_with_one_plain_line_per_factor(
    tmp_path, values, capsys
):
    sweep = grid_folder(tmp_path / "sweep", values)
    assert main(["effects", str(sweep), "--min-effect", "0.02"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Effects per factor (reference conv=standard, act=relu)")
    line = next(x for x in out.splitlines() if x.startswith("- conv=dsconv:"))
    assert (
        "top-1 against conv=standard, averaged over act (relu, swish, prelu), interval (0, +"
        in line
    )
    assert line.endswith(": better")  # every interaction with conv equivalent: no warning
    rows = list(csv.DictReader((sweep / "effects.csv").open()))
    assert [r["kind"] for r in rows[:5]] == [MAIN, MAIN, MAIN, INTERACTION, INTERACTION]
    assert {r["kind"] for r in rows[5:]} == {SIMPLE}
    main_row = rows[0]
    for column in (
        "estimate",
        "se",
        "df",
        "ci_low",
        "ci_high",
        "p_value",
        "p_holm",
        "verdict",
        "detectable_delta",
        "seeds_per_cell_needed",
        "dominant_cell",
        "dominant_share",
    ):
        assert column in main_row
    assert float(main_row["dominant_share"]) > 0 and main_row["dominant_cell"].startswith("conv=")
    assert (sweep / "effects.md").read_text() == out.split("wrote ")[0]
    assert (sweep / "effects.png").stat().st_size > 10_000
    with pytest.raises(SystemExit) as e:
        main(["effects", "--help"])
    assert e.value.code == 0 and "--reference KEY=VALUE" in capsys.readouterr().out


def test_an_interaction_not_shown_small_puts_simple_effects_under_the_average(tmp_path):
    rng = np.random.default_rng(8)
    # dsconv helps with relu and swish and hurts with prelu: the average hides it
    shift = {"relu": 0.05, "swish": 0.05, "prelu": -0.05}
    values = {
        (c, a): seeds_of(rng, 0.85 + (shift[a] if c == "dsconv" else 0), 0.004, 5)
        for c in CONVS
        for a in ACTS
    }
    sweep = grid_folder(tmp_path / "sweep", values)
    assert main(["effects", str(sweep), "--min-effect", "0.01", "--no-plot"]) == 0
    text = (sweep / "effects.md").read_text()
    line = next(x for x in text.splitlines() if x.startswith("- conv=dsconv:"))
    assert line.endswith("act changes it")
    table = text.split("| conv=dsconv |")[1]
    for act in ACTS:
        assert f"| ↳ conv=dsconv at act={act} |" in table.split("| act=swish |")[0]
    rows = {r["effect"]: r for r in csv.DictReader((sweep / "effects.csv").open())}
    assert rows["conv=dsconv x act=prelu"]["verdict"] == "worse"
    assert float(rows["conv=dsconv at act=prelu"]["estimate"]) == pytest.approx(
        np.mean(values[("dsconv", "prelu")]) - np.mean(values[("standard", "prelu")])
    )
    assert rows["conv=dsconv at act=prelu"]["verdict"] == ""  # simple effects describe


def test_a_ragged_grid_uses_the_cells_it_has_and_says_what_it_left_out(tmp_path, values):
    values = dict(values)
    values[("dsconv", "prelu")] = []  # a cell with no finished run
    values[("standard", "swish")] = values[("standard", "swish")][:1]  # one seed
    sweep = grid_folder(tmp_path / "sweep", values)
    fake_run(
        sweep / "99_conv=dsconv,act=prelu,seed=0",
        {"conv": "dsconv", "act": "prelu"},
        0,
        0,
        "failed",
    )
    result = effects(configurations(find_runs(sweep)), options=Options(min_effect=0.01))
    rows = {r.name: r for r in result.rows}
    conv = rows["conv=dsconv"]
    assert "only act=relu; act=swish of act (relu, swish, prelu)" in conv.averaged
    assert "no finished run in conv=dsconv,act=prelu" in conv.averaged
    assert conv.verdict == "not tested" and "one seed in conv=standard,act=swish" in conv.note
    assert rows["conv=dsconv x act=prelu"].verdict == "not tested"
    assert "no finished run" in rows["conv=dsconv x act=prelu"].note
    assert rows["act=prelu"].verdict == "better"  # standard only, as it says
    assert rows["act=prelu"].averaged.startswith("only conv=standard")
    pooled = effects(
        configurations(find_runs(sweep)), options=Options(min_effect=0.01, pooled=True)
    )
    conv = next(r for r in pooled.rows if r.name == "conv=dsconv")
    dof = sum(len(v) - 1 for v in values.values() if len(v) > 1)
    assert conv.verdict != "not tested" and conv.test.startswith(f"pooled t ({dof} df)")


def test_runs_with_no_factorial_structure_get_one_line_and_compare_works_as_before(tmp_path):
    rng = np.random.default_rng(9)
    one_key = grid_folder(
        tmp_path / "one", {("standard", a): seeds_of(rng, 0.9, 0.01) for a in ACTS}
    )
    at_a_time = grid_folder(
        tmp_path / "oat",
        {
            k: seeds_of(rng, 0.9, 0.01)
            for k in [("standard", "relu"), ("dsconv", "relu"), ("standard", "swish")]
        },
    )
    for folder, said in (
        (one_key, "one configuration key varies (act)"),
        (at_a_time, "one at a time, no two crossed"),
    ):
        assert main(["effects", str(folder), "--no-plot"]) == 0
        configs = configurations(find_runs(folder))
        result = effects(configs)
        assert said in result.grid.why_not and result.rows == []
        assert not (folder / "effects.csv").exists()
        assert len(compare(configs)) == len(configs) - 1  # compare as before
    search = grid_folder(
        tmp_path / "search",
        {k: seeds_of(rng, 0.9, 0.01) for k in [(c, a) for c in CONVS for a in ACTS]},
    )
    (search / "multirun.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": {"hydra/sweeper": "optuna"}}}})
    )
    assert "Optuna search" in effects(configurations(find_runs(search))).grid.why_not


def test_the_reference_levels_can_be_named_and_a_bad_one_names_the_choices(
    tmp_path, values, capsys
):
    sweep = grid_folder(tmp_path / "sweep", values)
    configs = configurations(find_runs(sweep))
    usual = {r.name: r for r in effects(configs).rows}
    flipped = {r.name: r for r in effects(configs, {"conv": "dsconv"}).rows}
    assert flipped["conv=standard"].estimate == pytest.approx(-usual["conv=dsconv"].estimate)
    assert (
        main(["effects", str(sweep), "--no-plot", "--reference", "conv=dsconv", "act=swish"]) == 0
    )
    assert "(reference conv=dsconv, act=swish)" in capsys.readouterr().out
    assert main(["effects", str(sweep), "--reference", "act=tanh"]) == 2
    assert "not a level of act; levels: relu, swish, prelu" in capsys.readouterr().err
    assert main(["effects", str(sweep), "--reference", "optim.lr=0.1"]) == 2
    assert "factors: conv, act" in capsys.readouterr().err


def test_intervals_stay_within_what_a_difference_of_accuracies_can_be(tmp_path):
    # two seeds a side, wildly spread: a t bound at Holm's level passes +-1 unless clipped
    values = {("standard", "relu"): [0.1, 0.9], ("standard", "swish"): [0.2, 0.95]}
    values |= {("dsconv", "relu"): [0.15, 0.85], ("dsconv", "swish"): [0.05, 0.99]}
    sweep = grid_folder(tmp_path / "sweep", values)
    configs = configurations(find_runs(sweep))
    for row in compare(configs):
        assert row.low >= -1 and row.high <= 1
    for row in effects(configs).rows:
        assert -row.bound <= row.low and row.high <= row.bound
        assert row.bound == (2 if row.kind == INTERACTION else 1)
    assert any(row.low == -1 or row.high == 1 for row in effects(configs).rows if row.kind == MAIN)


def test_extend_by_effects_adds_the_same_seeds_to_every_cell_until_the_effects_are_decided(
    tmp_path, monkeypatch, values
):
    sweep = grid_folder(tmp_path / "sweep", {k: v[:3] for k, v in values.items()})
    rng = np.random.default_rng(10)
    launched = []

    def fake_launch(sweep_dir, record, batch, first_number, look):
        # trains the seeds: each new run's top-1 drawn as the cell's were
        number = first_number
        for config, seeds in batch:
            conv, act = (o.split("=")[1] for o in config.own)
            for seed in seeds:
                top = 0.85 + 0.04 * (conv == "dsconv") + 0.03 * (act == "prelu")
                name = f"{number}_conv={conv},act={act},seed={seed}"
                fake_run(
                    sweep_dir / name,
                    {"conv": conv, "act": act},
                    seed,
                    float(top + rng.normal(0, 0.005)),
                )
                number += 1
            launched.append((config.label, seeds, look))
        return 0

    monkeypatch.setattr(extend_module, "_launch", fake_launch)
    plan = extend_module.extend(sweep, max_seeds=12, min_effect=0.01, by="effects", plot=False)
    assert plan.family == "effects" and plan.looks == [3, 6, 12]
    first_look = [x for x in launched if x[2] == 2]
    assert len(first_look) == 6 and {tuple(x[1]) for x in first_look} == {(3, 4, 5)}
    result = json.loads((sweep / "extend.json").read_text())
    assert result["family"] == "effects"
    rows = list(csv.DictReader((sweep / "effects.csv").open()))
    family = [r for r in rows if r["kind"] != SIMPLE]
    if plan.taken < len(plan.looks):  # stopped early: every effect decided
        assert all(r["verdict"] in ("better", "worse", "equivalent") for r in family)
    assert all(r["look"] for r in family if r["verdict"] != "not tested")
    assert "planned look" in (sweep / "effects.md").read_text()
    assert "fixed-sample look it does not count" in (sweep / "compare.md").read_text()
    with pytest.raises(ValueError, match="spends on effects, not --by configurations"):
        extend_module.extend(sweep)
    assert main(["effects", str(sweep), "--min-effect", "0.05", "--no-plot"]) == 2  # plan fixed it
    assert main(["effects", str(sweep), "--reference", "act=swish", "--no-plot"]) == 2


def test_extend_by_effects_refuses_runs_that_are_no_grid(tmp_path):
    rng = np.random.default_rng(11)
    sweep = grid_folder(tmp_path / "one", {("standard", a): seeds_of(rng, 0.9, 0.01) for a in ACTS})
    with pytest.raises(ValueError, match="--by effects: one configuration key varies"):
        extend_module.extend(sweep, max_seeds=8, by="effects")


def test_a_sweeps_end_writes_the_effects_and_tells_its_mlflow_parent_run(tmp_path, values):
    sweep = grid_folder(tmp_path / "sweep", values)
    tracked = importlib.util.find_spec("mlflow") is not None
    if tracked:
        from densenet_exp.config import MlflowLogger, node
        from densenet_exp.tracking import open_sweep

        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        open_sweep(node(MlflowLogger, {"enabled": True, "tracking_uri": uri}), sweep, [])
    end = finish_sweep(sweep, plot=False)
    assert (sweep / "effects.csv").is_file() and (sweep / "compare.csv").is_file()
    assert end.effects.family[0].name == "conv=dsconv"
    if tracked:
        from mlflow import MlflowClient

        parent = MlflowClient(uri).get_run(
            json.loads((sweep / "mlflow.json").read_text())["run_id"]
        )
        assert parent.data.tags["effect.conv_dsconv"] == end.effects.family[0].verdict
        assert parent.data.metrics["effect_estimate.conv_dsconv"] == pytest.approx(
            end.effects.family[0].estimate
        )


def test_the_run_tools_read_files_and_reach_up_to_nothing():
    """``runs/`` is below what launches jobs and tells trackers: none of its modules imports
    ``sweeps``, ``tracking``, the engine or the callbacks, nor starts a process (``__main__`` is
    the command's door)."""
    above = (
        "densenet_exp.sweeps",
        "densenet_exp.tracking",
        "densenet_exp.engine",
        "densenet_exp.callbacks",
    )
    for module in pkgutil.iter_modules(densenet_exp.runs.__path__):
        if module.name == "__main__":
            continue
        source = Path(densenet_exp.runs.__path__[0], f"{module.name}.py").read_text()
        for name in above:
            relative = "from .." + name.split(".", 1)[1]
            assert name not in source and relative not in source, (module.name, name)
        assert "subprocess" not in source, f"runs/{module.name}.py starts processes"
