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
from densenet_exp.runs import compare, configurations, find_runs, main, write_summary
from densenet_exp.runs.stats import holm, paired_bootstrap

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


def test_the_mcnemar_p_value_is_the_exact_binomial_test_on_the_discordant_images(tmp_path):
    rng = np.random.default_rng(1)
    base = errors_at(rng.choice(N_IMAGES, 80, replace=False))
    other = base.copy()
    fixed = np.flatnonzero(~base)[:12]  # 12 images only the new one gets right
    broken = np.flatnonzero(base)[:3]  # 3 only the baseline gets right
    other[fixed], other[broken] = True, False
    row = verdicts(sweep_of(tmp_path, {"relu": [base], "swish": [other]}))["act=swish"]
    assert row.test.startswith("exact McNemar (12 vs 3")
    assert row.p_value == pytest.approx(stats.binomtest(12, 15, 0.5).pvalue, rel=1e-12)
    assert row.delta == pytest.approx((12 - 3) / N_IMAGES)


def test_a_configuration_identical_to_the_baseline_is_no_detectable_difference(tmp_path):
    rng = np.random.default_rng(2)
    seeds = [errors_at(rng.choice(N_IMAGES, 60, replace=False)) for _ in range(3)]
    row = verdicts(sweep_of(tmp_path, {"relu": seeds, "gelu": [s.copy() for s in seeds]}))[
        "act=gelu"
    ]
    assert row.verdict == "no detectable difference"
    assert row.delta == 0.0 and row.p_value > 0.5
    assert row.detectable > 0  # and says what it could have seen


def test_fixing_a_tenth_of_the_errors_consistently_is_better_and_scattered_seeds_are_not(tmp_path):
    rng = np.random.default_rng(3)
    shared = rng.choice(N_IMAGES, 100, replace=False)  # the baseline's errors, every seed
    rest = np.setdiff1d(np.arange(N_IMAGES), shared)
    noise = lambda: rng.choice(rest, 5, replace=False)  # noqa: E731 - a few seed-specific errors
    base = [errors_at(np.r_[shared, noise()]) for _ in range(3)]
    # consistent: every seed fixes the same 10 of the baseline's 100 errors
    consistent = [errors_at(np.r_[shared[10:], noise()]) for _ in range(3)]
    # scattered: the same mean gain (+10 images), but one seed fixes 50 and the others break 40/+0
    scattered = [
        errors_at(np.r_[shared[50:], noise()]),
        errors_at(np.r_[shared, rest[:40], noise()]),
        errors_at(np.r_[shared[20:], noise()]),
    ]
    rows = verdicts(sweep_of(tmp_path, {"relu": base, "mish": consistent, "swish": scattered}))
    assert rows["act=mish"].delta == pytest.approx(0.010, abs=1e-9)
    assert rows["act=swish"].delta == pytest.approx(0.010, abs=1e-9)
    assert rows["act=mish"].verdict == "better" and rows["act=mish"].p_better > 0.99
    assert rows["act=swish"].verdict == "no detectable difference"
    assert rows["act=mish"].low > 0 > rows["act=swish"].low
    assert rows["act=mish"].test == "bootstrap (3 vs 3 seeds x 1000 images)"


def test_holm_turns_a_borderline_win_into_no_difference_among_many_comparisons(tmp_path):
    rng = np.random.default_rng(4)
    base = errors_at(rng.choice(N_IMAGES, 50, replace=False))
    win = base.copy()
    win[np.flatnonzero(~base)[:9]] = True  # 9 images won
    win[np.flatnonzero(base)[:1]] = False  # 1 lost: p = 0.0215
    p_alone = stats.binomtest(9, 10, 0.5).pvalue
    alone = verdicts(sweep_of(tmp_path / "alone", {"relu": [base], "swish": [win]}))
    assert alone["act=swish"].verdict == "better"
    assert alone["act=swish"].adjusted_p == pytest.approx(p_alone)
    many = {"relu": [base], "swish": [win]} | {f"null{i}": [base.copy()] for i in range(9)}
    crowd = verdicts(sweep_of(tmp_path / "crowd", many))
    assert crowd["act=swish"].p_value == pytest.approx(p_alone)
    assert crowd["act=swish"].adjusted_p == pytest.approx(10 * p_alone)  # smallest of 10
    assert crowd["act=swish"].verdict == "no detectable difference"


def test_holm_adjustment_is_the_step_down_rule():
    p = [0.01, 0.04, 0.03, 0.005]
    # by hand: sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1, then running maximum
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_the_bootstrap_pairs_images_across_the_two_configurations():
    # B = A shifted by one fixed image: paired, every resample's difference has the same sign
    a = np.ones((2, 200))
    a[:, :20] = 0
    b = a.copy()
    b[:, 0] = 1
    d = paired_bootstrap(a, b, resamples=2000)
    assert d.mean == pytest.approx(1 / 200)
    assert d.low >= 0 and d.p_better > 0.6


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
