"""The documentation: the site builds strict (no broken link, lost anchor or page left out of the
nav), every config key has a help line that the reference page shows, and every command the docs
show still runs: each ``python -m densenet_exp ...`` composes, each ``runs``/``predict`` command
names a command and options that exist."""

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, compose_cfg
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from densenet_exp.config import Config
from densenet_exp.config.reference import config_keys
from densenet_exp.plugins import find_own_plugins
from densenet_exp.predict import PredictConfig
from densenet_exp.sweeps.cli import parser as runs_parser
from densenet_exp.sweeps.cli import subcommands

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```.*?$(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"(?:^|\s)(?:\S*/)?python -m (densenet_exp(?:\.runs|\.predict)?)\b(.*)$")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")  # IMAGES, MULTIRUN_DIR, MORE: the reader's value


def commands_in(text: str, where: str) -> list[tuple[str, str, list[str]]]:
    """(where, module, arguments) of every command in a code block or inline code span."""
    found = []
    blocks = [b.replace("\\\n", " ") for b in FENCE.findall(text)]  # continued lines joined
    spans = INLINE.findall(FENCE.sub("", text))
    for chunk in [*blocks, *spans]:
        for line in chunk.splitlines():
            m = COMMAND.search(line.split("  #")[0].split(" # ")[0])
            if m is None or "[" in m.group(2).replace("=[", ""):  # a usage line: [OPTIONS]
                continue
            args = shlex.split(m.group(2).split("|")[0].split("&&")[0])
            found.append((f"{where}: {line.strip()}", m.group(1), args))
    return found


def documented_commands() -> list[tuple[str, str, list[str]]]:
    return [c for path in DOCS for c in commands_in(path.read_text(), str(path.relative_to(ROOT)))]


COMMANDS = documented_commands()
find_own_plugins()  # hydra/launcher=slots in the commands


def test_the_checks_catch_a_command_gone_stale():
    text = (
        "```bash\npython -m densenet_exp -m conv=standard,dsconv act=swihs  # a typo\n"
        "python -m densenet_exp.runs compare SWEEP --baseline-config x \\\n  --no-plot\n```\n"
        "and `python -m densenet_exp.predict checkpoint=c.pt inputs=x`"
    )
    (_, _, train), (_, _, runs), (_, _, predict) = commands_in(text, "fake.md")
    assert train == ["-m", "conv=standard,dsconv", "act=swihs"]
    assert runs == ["compare", "SWEEP", "--baseline-config", "x", "--no-plot"]
    with pytest.raises(Exception, match="swihs"):
        test_each_documented_training_command_composes("fake.md", train)
    with pytest.raises(pytest.fail.Exception, match="unrecognized arguments: --baseline-config"):
        test_each_documented_runs_command_exists_with_its_options("fake.md", runs)
    with pytest.raises(AssertionError, match="inputs=x"):
        test_each_documented_predict_command_names_keys_that_exist("fake.md", predict)


def test_the_docs_show_commands_of_every_kind():
    modules = [module for _, module, _ in COMMANDS]
    for module in ("densenet_exp", "densenet_exp.runs", "densenet_exp.predict"):
        assert modules.count(module) >= 3, module


def _first_of_each_sweep(overrides: list[str]) -> tuple[list[str], list[str]]:
    """A sweep's first job (``a=1,2`` -> ``a=1``; ``range(3)`` -> 0), and the keys whose value
    is the reader's to fill in (checked to exist, not composed)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    job, placeholders = [], []
    for o in parsed:
        if o.is_sweep_override():
            job.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}")
        elif PLACEHOLDER.match(o.get_value_element_as_str() or "-"):
            placeholders.append(o.get_key_element())
        else:
            job.append(o.input_line)
    return job, placeholders


@pytest.mark.parametrize(
    "where,args",
    [(w, a) for w, m, a in COMMANDS if m == "densenet_exp"],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_each_documented_training_command_composes(where, args):
    flags = {"-m", "--multirun", "--cfg", "job", "hydra", "all", "--help", "-h", "--hydra-help"}
    overrides = [a for a in args if a not in flags and a != "..."]  # ...: and so on
    plugin = next((a.split("=")[1] for a in overrides if a.startswith("hydra/launcher=")), None)
    if plugin == "ray" and importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        pytest.skip("hydra/launcher=ray: the ray extra is an environment of its own")
    job, placeholders = _first_of_each_sweep(overrides)
    cfg = compose_cfg(job, hydra_config=True)
    for key in placeholders:
        assert OmegaConf.select(cfg, key.lstrip("+~"), default="absent") != "absent", (where, key)


@pytest.mark.parametrize(
    "where,args",
    [(w, a) for w, m, a in COMMANDS if m == "densenet_exp.runs"],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_each_documented_runs_command_exists_with_its_options(where, args):
    parser = runs_parser()
    parser.exit_on_error = False
    commands = subcommands(parser)
    for sub in commands.values():  # the subcommands' parsers must not exit either
        sub.exit_on_error = False
    if not args:  # the tool named in passing
        return
    if "--help" in args or "-h" in args:  # a help line: the command must exist
        assert args[:1] in ([], ["--help"], ["-h"]) or args[0] in commands, where
        return
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            _, extra = parser.parse_known_args(args)
    except (argparse.ArgumentError, SystemExit) as e:
        pytest.fail(f"{where}: {err.getvalue().strip() or e}")
    if extra:
        pytest.fail(f"{where}: unrecognized arguments: {' '.join(extra)}")


@pytest.mark.parametrize(
    "where,args",
    [(w, a) for w, m, a in COMMANDS if m == "densenet_exp.predict"],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_each_documented_predict_command_names_keys_that_exist(where, args):
    keys = {f.name for f in dataclasses.fields(PredictConfig)}
    for arg in args:
        if arg in ("--help", "-h"):
            continue
        assert "=" in arg and arg.split("=", 1)[0] in keys, (where, arg)


def test_every_config_key_has_a_help_line_and_the_reference_lists_every_key():
    keys = config_keys()
    assert [k.key for k in keys if not k.help] == []
    # independent of the reference's own walk: the keys of the composed default config
    plain = OmegaConf.to_container(OmegaConf.structured(Config))

    def leaves(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict) and k != "params":
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    assert sorted(k.key for k in keys) == sorted(leaves(plain))
    by_key = {k.key: k for k in keys}
    assert by_key["amp.opt_level"].choices == ("O0", "O1", "O2", "O3")
    assert by_key["trainer.grad_clip"].type == "float or null"
    assert (
        by_key["data.batch_size"].default == "64" and "per rank" in by_key["data.batch_size"].help
    )


def test_a_help_line_is_the_comment_beside_a_field_or_right_above_it(tmp_path, monkeypatch):
    (tmp_path / "helped.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass

            @dataclass
            class Node:
                a: int = 1  # beside
                # above, first line
                # and its second
                b: str = "x"
                c: float = 0.5

                # a comment after a blank line is still right above
                d: bool = True
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import helped

    got = {k.key: k.help for k in config_keys(helped.Node)}
    assert got == {
        "a": "beside",
        "b": "above, first line and its second",
        "c": "",
        "d": "a comment after a blank line is still right above",
    }


def test_the_site_builds_strict_and_its_reference_shows_every_key(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (site / "reference" / "config" / "index.html").read_text()
    for key in config_keys():
        assert f"<code>{key.key}</code>" in page, key.key
    runs = (site / "reference" / "runs" / "index.html").read_text()
    assert "--by {configurations,effects}" in runs and "runs extend" in runs
    assert "build_model" in (site / "reference" / "api" / "index.html").read_text()


def test_the_readme_is_a_front_page_and_no_document_tells_how_it_was_developed():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    # the README is not part of the site's strict build: its own links are checked here
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        assert target.startswith("http") or (ROOT / target).exists(), target
    story = re.compile(r"\bsessions?\b|\bstints?\b", re.I)  # figures carry dates and commits
    for path in [*DOCS, ROOT / "benchmarks" / "RESULTS.md"]:
        found = [line for line in path.read_text().splitlines() if story.search(line)]
        assert found == [], (path, found[:3])
