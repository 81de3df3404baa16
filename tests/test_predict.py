"""predict: a trained run's model on images, folders and lists, with bad files and exports."""

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PYTHON, ROOT, compose_cfg
from PIL import Image

from densenet_exp import train, val_predictions
from densenet_exp.data import build_datasets
from densenet_exp.predict import load_model, main

COLORS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def colour_folder(root, per_class=6):
    """Noisy squares of three colours: learnable in one or two epochs."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 3)):
        for name, rgb in COLORS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                arr = np.clip(np.array(rgb) + rng.normal(0, 40, (12, 12, 3)), 0, 255).astype(
                    np.uint8
                )
                Image.fromarray(arr).save(root / split / name / f"{i}.png")
    return root


def overrides(root, *extra):
    return [
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=8",
        "data.batch_size=6",
        "data.num_workers=0",
        "data.augment=none",
        "model.growth_rate=4",
        "model.block_config=[2,2]",
        "model.num_init_features=8",
        "model.stem=cifar",
        "trainer.epochs=2",
        "trainer.progress=false",
        "trainer.device=cpu",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    root = colour_folder(tmp / "data")
    run = tmp / "run"
    train(compose_cfg(overrides(root)), run)
    return root, run


def test_evaluate_on_the_val_folder_matches_the_runs_val_top1(trained, capsys):
    root, run = trained
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    code = main(
        [
            f"checkpoint={run / 'checkpoints' / 'last.pt'}",
            f"input={root / 'val'}",
            "evaluate=true",
            "progress=false",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert f"evaluated 9 images: top1 {final['val_top1']:.4f}" in out
    assert "confusion matrix" in out


def test_evaluate_gives_the_runs_own_per_image_predictions(trained, tmp_path):
    root, run = trained
    out = tmp_path / "p.csv"
    ckpt = run / "checkpoints" / "last.pt"
    args = [f"checkpoint={ckpt}", f"input={root / 'val'}", f"output={out}", "topk=3"]
    assert main([*args, "evaluate=true"]) == 0
    predicted = {r["path"]: r for r in csv.DictReader(out.open())}
    rows = val_predictions.read(run / val_predictions.FINAL_FILE)  # the last evaluation = last.pt
    assert len(rows) == len(predicted) == 9
    for row in rows:
        p = predicted[str(root / row["image"])]
        assert p["class_1"] == row["pred"]
        assert float(p["prob_1"]) == pytest.approx(float(row["p_pred"]), abs=2e-6)
        assert [p["class_2"], p["class_3"]] == [row["top2"], row["top3"]]
        assert row["correct"] == str(int(row["pred"] == row["true"]))
        assert row["image"].startswith("val/" + row["true"] + "/")


def test_the_same_image_gets_the_same_probabilities_as_in_training_eval(trained, tmp_path):
    root, run = trained
    model, state = load_model(run / "checkpoints" / "last.pt", torch.device("cpu"))
    val = build_datasets(compose_cfg([*overrides(root), "data.cache=none"]).data).val
    x, _ = val[4]
    # what training evaluates from its decoded cache (the default) is that tensor, bit for bit
    cached = build_datasets(compose_cfg([*overrides(root), "data.cache=ram"]).data)
    assert torch.equal(cached.eval_on_device(cached.val.__getitems__([4])[0])[0], x)
    with torch.no_grad():
        expected = model(x[None]).softmax(1)[0]
    out = tmp_path / "p.json"
    assert (
        main(
            [
                f"checkpoint={run / 'checkpoints' / 'last.pt'}",
                f"input={val.samples[4][0]}",
                f"output={out}",
                "topk=3",
            ]
        )
        == 0
    )
    (row,) = json.loads(out.read_text())
    got = {d["class"]: d["prob"] for d in row["topk"]}
    for i, name in enumerate(state["classes"]):
        assert got[name] == pytest.approx(expected[i].item(), abs=1e-6)


def test_a_folder_with_a_corrupt_image_and_a_text_file_predicts_the_rest(trained, tmp_path):
    _, run = trained
    folder = tmp_path / "in"
    folder.mkdir()
    for i, rgb in enumerate(COLORS.values()):
        Image.new("RGB", (12, 12), rgb).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "notes.txt").write_text("hello")
    out = tmp_path / "p.csv"
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "densenet_exp.predict",
            f"checkpoint={run / 'checkpoints' / 'best.pt'}",
            f"input={folder}",
            f"output={out}",
            "topk=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1  # some files failed
    rows = {r["path"].rsplit("/", 1)[1]: r for r in csv.DictReader(out.open())}
    assert set(rows) == {"0.png", "1.png", "2.png", "broken.jpg", "notes.txt"}
    assert rows["broken.jpg"]["error"] and rows["notes.txt"]["error"]
    for name in ("0.png", "1.png", "2.png"):
        assert rows[name]["error"] == "" and rows[name]["class_1"] in COLORS
        assert 0 < float(rows[name]["prob_1"]) <= 1 and float(rows[name]["prob_2"]) <= float(
            rows[name]["prob_1"]
        )
    assert "2 of 5 file(s) could not be read" in proc.stderr
    assert "broken.jpg" in proc.stderr


def test_a_text_file_of_paths_is_an_input_list(trained, tmp_path):
    root, run = trained
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"{root / 'val' / 'red' / '0.png'}\n# comment\n{root / 'val' / 'blue' / '1.png'}\n"
    )
    out = tmp_path / "p.json"
    assert (
        main([f"checkpoint={run / 'checkpoints' / 'last.pt'}", f"input={listing}", f"output={out}"])
        == 0
    )
    rows = json.loads(out.read_text())
    assert [r["path"].split("/")[-2] for r in rows] == ["red", "blue"]
    assert all(len(r["topk"]) == 3 for r in rows)  # topk capped at the class count


def test_checkpoints_from_dsconv_prelu_syncbn_o2_ddp_runs_load_and_predict(tmp_path):
    root = colour_folder(tmp_path / "data")
    run = tmp_path / "run"
    cfg = compose_cfg(
        overrides(
            root,
            "conv=dsconv",
            "act=prelu",
            "sync_bn=true",
            "amp=O2",
            "dist.nproc_per_node=2",
            "model.memory_efficient=true",
            "trainer.epochs=1",
        )
    )
    assert train(cfg, run)["world_size"] == 2
    out = tmp_path / "p.json"
    assert (
        main(
            [
                f"checkpoint={run / 'checkpoints' / 'last.pt'}",
                f"input={root / 'val'}",
                f"output={out}",
                "amp=O0",
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert len(rows) == 9 and all(r["error"] is None and r["topk"] for r in rows)


def _load_exported(kind: str, path: Path):
    """The exported file run by its own runtime, as a deployment would run it."""
    if kind == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    if kind == "pt2":
        return torch.export.load(str(path)).module()
    return torch.jit.load(str(path))


@pytest.mark.parametrize("kind", ["onnx", "pt2", "torchscript"])
def test_an_export_computes_what_the_eager_model_does_at_any_batch_size(
    trained, tmp_path, capsys, kind
):
    if kind == "onnx":
        pytest.importorskip("onnxruntime", reason="the test extra installs onnx and onnxruntime")
    root, run = trained
    target = tmp_path / f"model.{kind}"
    checkpoint = run / "checkpoints" / "last.pt"
    args = [f"checkpoint={checkpoint}", f"input={root / 'val' / 'red'}", f"export={kind}"]
    assert main([*args, f"export_path={target}"]) == 0
    assert target.is_file() and "max |exported - eager|" in capsys.readouterr().out
    model, _ = load_model(checkpoint, torch.device("cpu"))
    exported = _load_exported(kind, target)
    for batch in (1, 5):  # neither is the batch it was exported with (the 3 red images)
        x = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = model(x)
            got = exported(x)
        assert got.shape == (batch, 3)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    if kind == "pt2":
        assert main(args) == 0  # default path: beside the checkpoint, with its suffix
        assert (run / "checkpoints" / "last.pt2").is_file()


def test_an_unknown_export_is_refused_before_any_work(trained, capsys):
    root, run = trained
    args = [f"checkpoint={run / 'checkpoints' / 'last.pt'}", f"input={root}", "export=tflite"]
    assert main(args) == 2
    assert (
        "Invalid value 'tflite', expected one of [onnx, pt2, torchscript]"
        in capsys.readouterr().err
    )


def test_bad_arguments_and_checkpoints_give_clear_errors(tmp_path, capsys):
    assert main(["checkpoint=x.pt", "input=y", "topkk=3"]) == 2
    assert "valid keys" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"truncated")
    assert main([f"checkpoint={bad}", f"input={tmp_path}"]) == 2
    assert f"cannot load checkpoint {bad}" in capsys.readouterr().err
