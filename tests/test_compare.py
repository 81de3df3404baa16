"""The by-configuration summary and the comparison with a baseline, on runs the test writes itself.

Every statistic is checked against a computation made here, with numpy and scipy directly.
"""

import csv
import json
import math

import numpy as np
import pytest
import torch
import torchvision
import yaml
from scipy import stats

from densenet_exp import val_predictions
from densenet_exp.models import densenet121
from densenet_exp.models.cost import count_macs
from densenet_exp.runs import compare, configurations, find_runs, write_summary
from densenet_exp.runs.compare import Options
from densenet_exp.runs.plan import Plan
from densenet_exp.sweeps.cli import main

N_IMAGES = 1000


def fake_run(path, act, seed, summary, correct, history=None):
    """A finished run folder: overrides, config, choices, metrics and per-image predictions."""
    (path / ".hydra").mkdir(parents=True)
    overrides = [f"act={act}", f"trainer.seed={seed}"]
    config = {"act": {"name": act}, "trainer": {"seed": seed, "epochs": 3}}
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": {"act": act}}}})
    )
    summary = {"status": "completed", "final_val_top1": float(np.mean(correct)), **summary}
    (path / "metrics.json").write_text(json.dumps(summary))
    rows = history or [{"epoch": 0, "step": 1, "val_top1": summary["final_val_top1"]}]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with (path / val_predictions.FINAL_FILE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(val_predictions.COLUMNS)
        for i, ok in enumerate(correct):
            writer.writerow(
                [i, f"val/{i % 10}/{i}.png", "a", "a" if ok else "b", int(ok), 0.5, 0.5]
            )
    return path


def errors_at(wrong, n=N_IMAGES):
    correct = np.ones(n, bool)
    correct[list(wrong)] = False
    return correct


def sweep_of(tmp_path, configs):
    """configs: {act: [correct array per seed]} -> a sweep folder of fake runs."""
    job = 0
    for act, seeds in configs.items():
        for seed, correct in enumerate(seeds):
            fake_run(tmp_path / f"{job}_act={act},seed={seed}", act, seed, {}, correct)
            job += 1
    return tmp_path


def verdicts(tmp_path, baseline="act=relu"):
    rows = compare(configurations(find_runs(tmp_path)), baseline)
    return {r.config.label: r for r in rows}


def test_by_configuration_means_stds_and_cis_match_an_independent_computation(tmp_path):
    values = {"relu": [0.91, 0.93, 0.96], "swish": [0.95, 0.94, 0.97]}
    job = 0
    for act, tops in values.items():
        for seed, top in enumerate(tops):
            summary = {
                "best_val_top1": top,
                "final_val_loss": 1 - top,
                "params": 100,
                "wall_s": 10.0 + seed,
            }
            fake_run(tmp_path / f"{job}_act={act}", act, seed, summary, errors_at(range(5)))
            job += 1
    write_summary(tmp_path, plot=False)
    rows = {
        r["configuration"]: r for r in csv.DictReader((tmp_path / "summary_by_config.csv").open())
    }
    assert set(rows) == {"act=relu (baseline)", "act=swish"}
    for act, tops in values.items():
        row = rows[f"act={act}" + (" (baseline)" if act == "relu" else "")]
        x = np.array(tops)
        half = stats.t.ppf(0.975, df=2) * x.std(ddof=1) / math.sqrt(3)
        assert row["n"] == "3" and row["seeds"] == "0 1 2"
        assert float(row["best_val_top1_mean"]) == pytest.approx(x.mean())
        assert float(row["best_val_top1_std"]) == pytest.approx(x.std(ddof=1))
        assert float(row["best_val_top1_ci_low"]) == pytest.approx(x.mean() - half)
        assert float(row["best_val_top1_ci_high"]) == pytest.approx(min(1.0, x.mean() + half))
        loss = 1 - x
        assert float(row["final_val_loss_std"]) == pytest.approx(loss.std(ddof=1))
        assert float(row["wall_s"]) == pytest.approx(11.0) and row["params"] == "100"
    text = (tmp_path / "summary.md").read_text()
    assert "## By configuration" in text and "act=relu (baseline) | 3 |" in text


def seeds_with_errors(rng, counts, n=N_IMAGES):
    """One correct-array per seed, with ``counts[i]`` errors at random images."""
    return [errors_at(rng.choice(n, k, replace=False), n) for k in counts]


def top1_of(seeds):
    return np.array([s.mean() for s in seeds])


def test_one_seed_a_side_is_not_tested_and_the_two_runs_disagreement_is_described(tmp_path):
    rng = np.random.default_rng(1)
    base = errors_at(rng.choice(N_IMAGES, 80, replace=False))
    other = base.copy()
    other[np.flatnonzero(~base)[:12]] = True  # 12 images only the new run gets right
    other[np.flatnonzero(base)[:3]] = False  # 3 only the baseline's
    row = verdicts(sweep_of(tmp_path, {"relu": [base], "swish": [other]}))["act=swish"]
    assert row.verdict == "not tested" and math.isnan(row.p_value) and math.isnan(row.low)
    assert row.note == "not tested: one seed each, the seed spread is unknown"
    assert row.runs_differ_on == 15 and row.delta == pytest.approx((12 - 3) / N_IMAGES)
    assert row.advice.startswith("at least ") and "seeds each" in row.advice


def test_the_seeds_top1_are_compared_by_welchs_t_as_scipy_computes_it(tmp_path):
    rng = np.random.default_rng(2)
    base = seeds_with_errors(rng, [60, 75, 52])
    new = seeds_with_errors(rng, [41, 50, 38])
    row = verdicts(sweep_of(tmp_path, {"relu": base, "swish": new}))["act=swish"]
    a, b = top1_of(base), top1_of(new)
    welch = stats.ttest_ind(b, a, equal_var=False)
    assert row.test == "Welch t (3 vs 3 seeds)"
    assert row.delta == pytest.approx(b.mean() - a.mean())
    assert row.p_value == pytest.approx(welch.pvalue) and row.df == pytest.approx(welch.df)
    # one comparison: Holm over its two directions is the two-sided test, its interval the 95% one
    ci = welch.confidence_interval(0.95)
    assert row.adjusted_p == pytest.approx(welch.pvalue)
    assert row.verdict == ("better" if welch.pvalue <= 0.05 else "undecided")
    if row.verdict == "undecided":
        assert (row.low, row.high) == pytest.approx((ci.low, ci.high))
    wins = sum((y > x) + 0.5 * (y == x) for x in a for y in b)
    assert row.b_beats_a == pytest.approx(wins / 9)
    assert row.min_effect == pytest.approx(0.1 * (1 - a.mean()))  # a tenth of the errors


def test_a_copy_of_the_baseline_is_equivalent_within_a_wide_margin_and_says_what_would_decide(
    tmp_path,
):
    rng = np.random.default_rng(3)
    seeds = seeds_with_errors(rng, [60, 66, 55])
    sweep_of(tmp_path, {"relu": seeds, "gelu": [s.copy() for s in seeds]})
    configs = configurations(find_runs(tmp_path))
    wide = {r.config.label: r for r in compare(configs, "act=relu", Options(min_effect=0.05))}
    assert wide["act=gelu"].verdict == "equivalent" and wide["act=gelu"].delta == 0.0
    narrow = {r.config.label: r for r in compare(configs, "act=relu")}["act=gelu"]
    assert narrow.verdict == "undecided" and narrow.detectable > narrow.min_effect
    assert narrow.seeds_needed > 3 and narrow.advice.startswith(
        f"about {narrow.seeds_needed} seeds"
    )


def test_holm_turns_a_lone_win_into_undecided_among_many_comparisons(tmp_path):
    base = [errors_at(range(k)) for k in (50, 55, 60)]
    win = [errors_at(range(k)) for k in (30, 33, 36)]
    p_alone = stats.ttest_ind(top1_of(win), top1_of(base), equal_var=False).pvalue
    alone = verdicts(sweep_of(tmp_path / "alone", {"relu": base, "swish": win}))
    assert alone["act=swish"].verdict == "better" and alone["act=swish"].low == 0
    assert alone["act=swish"].adjusted_p == pytest.approx(p_alone)
    many = {"relu": base, "swish": win} | {f"null{i}": [s.copy() for s in base] for i in range(9)}
    crowd = verdicts(sweep_of(tmp_path / "crowd", many))
    # 20 one-sided hypotheses; the smallest p (half the two-sided) is multiplied by 20
    assert crowd["act=swish"].adjusted_p == pytest.approx(min(1.0, 10 * p_alone))
    assert crowd["act=swish"].verdict == "undecided" and 0.005 < p_alone < 0.05
    assert crowd["act=swish"].low < 0 < crowd["act=swish"].high


def test_pooled_seed_variance_tests_one_seed_a_side_with_the_sweeps_spread(tmp_path):
    rng = np.random.default_rng(4)
    others = {
        "gelu": seeds_with_errors(rng, [40, 52, 47]),
        "mish": seeds_with_errors(rng, [45, 39]),
    }
    base, new = seeds_with_errors(rng, [50]), seeds_with_errors(rng, [20])
    sweep_of(tmp_path, {"relu": base, "swish": new, **others})
    configs = configurations(find_runs(tmp_path))
    row = {r.config.label: r for r in compare(configs, "act=relu", Options(pooled=True))}
    g, m = top1_of(others["gelu"]), top1_of(others["mish"])
    var = (np.sum((g - g.mean()) ** 2) + np.sum((m - m.mean()) ** 2)) / 3  # 2 + 1 df
    t = 0.03 / math.sqrt(var * 2)
    p_one = stats.t.sf(t, 3)
    assert row["act=swish"].test == "pooled t (3 df) (1 vs 1 seeds)"
    assert row["act=swish"].p_value == pytest.approx(2 * p_one)
    assert row["act=swish"].adjusted_p == pytest.approx(min(1.0, 6 * p_one))  # 3 comparisons


def test_the_image_term_widens_the_interval_when_configurations_differ_on_some_images(tmp_path):
    rng = np.random.default_rng(5)
    shared = rng.choice(N_IMAGES, 60, replace=False)  # hard images: wrong in every seed
    rest = np.setdiff1d(np.arange(N_IMAGES), shared)
    base = [errors_at(np.r_[shared, rng.choice(rest, k, replace=False)]) for k in (3, 6, 4)]
    new = [s.copy() for s in base]
    for s in new:  # every seed fixes the same 30 hard images: a real, image-specific gain
        s[shared[:30]] = True
    sweep_of(tmp_path, {"relu": base, "swish": new})
    configs = configurations(find_runs(tmp_path))
    plain = compare(configs, "act=relu")[0]
    both = compare(configs, "act=relu", Options(images=True))[0]
    assert both.test.startswith("Welch t + images") and both.se > plain.se
    assert both.delta == plain.delta


def test_a_planned_look_is_tested_at_the_level_the_plan_spends_there(tmp_path):
    rng = np.random.default_rng(6)
    base = seeds_with_errors(rng, [50, 58, 54, 61])
    new = seeds_with_errors(rng, [30, 35, 33, 29])
    sweep_of(tmp_path, {"relu": base, "swish": new})
    plan = Plan(looks=[2, 4], min_effect=0.005, baseline="act=relu", taken=1)
    row = compare(configurations(find_runs(tmp_path)), None, None, plan)[0]
    a, b = top1_of(base[:2]), top1_of(new[:2])  # look 1: the first 2 seeds, by seed
    welch = stats.ttest_ind(b, a, equal_var=False)
    spent = 2 * stats.norm.sf(stats.norm.ppf(0.975) / math.sqrt(0.5))  # O'Brien-Fleming at 1/2
    level = spent / 2  # Bonferroni over the two directions of the one comparison
    assert row.look == 1 and row.n == 2
    se = (b.mean() - a.mean()) / welch.statistic
    assert row.se == pytest.approx(se)
    assert row.low == pytest.approx(b.mean() - a.mean() - stats.t.ppf(1 - level, welch.df) * se)
    assert row.verdict == "undecided"  # 2 seeds at a level of 0.0028 decide nothing here
    plan.taken = 2
    row = compare(configurations(find_runs(tmp_path)), None, None, plan)[0]
    assert row.look == 2 and row.n == 4 and row.verdict == "better"
    # a look of one seed a side is not tested; the next look is
    one_first = Plan(looks=[1, 2], min_effect=0.005, baseline="act=relu", taken=2)
    row = compare(configurations(find_runs(tmp_path)), None, None, one_first)[0]
    assert row.look == 2 and row.n == 2 and row.test == "Welch t (2 vs 2 seeds)"
    assert row.note == ""  # look 1's "not tested: one seed each" no longer holds
    with pytest.raises(ValueError, match="plan compares against act=relu, not act=swish"):
        compare(configurations(find_runs(tmp_path)), "act=swish", None, plan)
    with pytest.raises(ValueError, match=r"plan fixed the min effect at 0\.005, not 0\.01"):
        compare(configurations(find_runs(tmp_path)), None, Options(min_effect=0.01), plan)


def test_the_baseline_is_the_default_choice_unless_one_is_named(tmp_path, capsys):
    seeds = [errors_at(range(10))]
    sweep_of(tmp_path, {"swish": seeds, "relu": [s.copy() for s in seeds]})  # relu: the default
    configs = configurations(find_runs(tmp_path))
    assert [c.label for c in configs if c.baseline] == ["act=relu"]
    assert main(["compare", str(tmp_path), "--baseline", "act=swish", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "baseline: act=swish" in out and "| act=relu | 1 |" in out
    assert (tmp_path / "compare.csv").is_file() and (tmp_path / "compare.md").is_file()
    assert main(["compare", str(tmp_path), "--baseline", "act=nope"]) == 2
    assert "act=nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", str(tmp_path), "--min-effect", "2"])
    assert "2 is not a difference of top-1 in (0, 1)" in capsys.readouterr().err
    assert main(["extend", str(tmp_path)]) == 2  # fake runs: no sweep record to extend through
    assert "has no multirun.yaml" in capsys.readouterr().err


def test_flop_counter_matches_torchvisions_published_densenet121_gmacs():
    tv = count_macs(torchvision.models.densenet121(), 224)
    assert tv == pytest.approx(2.834e9, rel=0.02)  # torchvision's model card: 2.834 "GFLOPS"
    ours = count_macs(densenet121(), 224)
    # our transitions pool before their 1x1 conv: each does a quarter of its work. By hand:
    # transition k maps 2^(7+k) -> 2^(6+k) channels at 56 / 2^(k-1) px, k = 1, 2, 3
    transitions = sum(2 ** (7 + k) * 2 ** (6 + k) * (56 // 2 ** (k - 1)) ** 2 for k in (1, 2, 3))
    assert ours == tv - 3 * transitions // 4


def test_the_flop_count_leaves_the_model_as_it_was():
    model = densenet121(num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, 32)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_baseline_of_a_swept_value_is_the_value_the_sweep_started_from(tmp_path):
    # multirun.yaml holds the sweep's config before the swept values: optim.lr was 0.1 there
    (tmp_path / "multirun.yaml").write_text(
        yaml.safe_dump({"optim": {"lr": 0.1}, "hydra": {"runtime": {"choices": {"act": "relu"}}}})
    )
    for job, lr in enumerate((0.05, 0.1, 0.2)):
        run = fake_run(tmp_path / f"{job}_lr", "relu", 0, {}, errors_at(range(10)))
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optim.lr={lr}"]))
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "optim": {"lr": lr}}))
    configs = configurations(find_runs(tmp_path))
    assert [c.label for c in configs] == ["optim.lr=0.05", "optim.lr=0.1", "optim.lr=0.2"]
    assert [c.label for c in configs if c.baseline] == ["optim.lr=0.1"]


def test_extend_adds_seeds_only_to_the_open_comparisons_and_the_baseline(tmp_path, monkeypatch):
    from densenet_exp.sweeps import extend as extend_module

    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {}}}))
    steady = [errors_at(range(k)) for k in (50, 51, 52)]  # seeds that barely differ
    sweep_of(
        tmp_path,
        {
            "relu": steady,
            "gelu": [s.copy() for s in steady],  # the same: equivalent within ±0.05
            "mish": [errors_at(range(k)) for k in (30, 60, 45)],  # spread out: undecided
        },
    )
    launched = []

    def fake_launch(sweep, record, batch, first_number, look):
        launched.append(([(config.label, seeds) for config, seeds in batch], first_number, look))
        return 0

    monkeypatch.setattr(extend_module, "_launch", fake_launch)
    plan = extend_module.extend(tmp_path, max_seeds=6, min_effect=0.05)
    assert plan.looks == [3, 6] and plan.taken == 2 and plan.baseline == "act=relu"
    # one launch for the look; new seeds after every seed used, the same for each; job numbers
    # after the sweep's
    assert launched == [([("act=relu", [3, 4, 5]), ("act=mish", [3, 4, 5])], 9, 2)]
    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    assert {r["configuration"]: r["verdict"] for r in rows}["act=gelu"] == "equivalent"
    assert "planned look 2 of 2" in (tmp_path / "compare.md").read_text()
    with pytest.raises(ValueError, match="plan ends at 6 seeds, not 8"):
        extend_module.extend(tmp_path, max_seeds=8)


def test_the_summary_picture_names_configurations_apart_and_counts_epochs_as_metrics_jsonl(
    tmp_path,
):
    from densenet_exp.runs.plots import summary_figure

    history = [{"epoch": e, "step": 10 * e, "val_top1": 0.5 + 0.1 * e} for e in range(3)]
    for k, act in enumerate(("relu", "swish", "prelu")):
        for seed in range(2):
            correct = errors_at(range(5 + k + seed))
            # swish and prelu at the same cost: their points share an x
            summary = {"macs_per_image": 4e6 if act == "relu" else 2e6}
            fake_run(tmp_path / f"{2 * k + seed}_act={act}", act, seed, summary, correct, history)
    configs = configurations(find_runs(tmp_path))
    fig = summary_figure(configs)
    left, right = fig.axes
    assert [list(line.get_xdata()) for line in left.get_lines()] == [[0, 1, 2]] * 3
    assert "from 0" in left.get_xlabel()
    assert list(right.texts) == []  # no label written beside a point, where two could overlap
    named = [t.get_text() for t in right.get_legend().get_texts()]
    assert sorted(named) == sorted(
        [f"{c.label}{' (baseline)' if c.baseline else ''} (n=2)" for c in configs]
        + ["Pareto front"]
    )
