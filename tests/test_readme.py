"""The README says what the code does: the ``wsi-score`` synopsis matches its parser, and the Python API
example runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wsi_pipeline.cli.score import parser

from .conftest import REPO, make_slide

README = (REPO / "README.md").read_text()


def code_block(section: str, language: str = "") -> str:
    """The first fenced block (``` + ``language``) after the heading ``section``."""
    start = README.index(f"\n## {section}\n")
    opening = README.index(f"\n```{language}\n", start) + len(f"\n```{language}\n")
    return README[opening : README.index("\n```\n", opening)]


def synopsis_options(synopsis: str) -> dict[str, str | None]:
    """{flag: its value as written (``auto|cpu``, ``N``) or None for a switch} of a synopsis such as
    ``cmd ARG [...] -o OUT [--device auto|cpu|cuda[:N]] [--tta]``."""
    tokens = synopsis.split()
    options: dict[str, str | None] = {}
    for token, after in zip(tokens, [*tokens[1:], ""], strict=True):
        if not token.lstrip("[").startswith("-"):
            continue  # the program, a positional, a value
        flag = token.removeprefix("[")
        if flag.endswith("]"):  # [--tta]
            options[flag.removesuffix("]")] = None
        else:  # [--device VALUE] or -o OUT
            options[flag] = after.removesuffix("]") if token.startswith("[") else after
    return options


def test_the_wsi_score_synopsis_matches_the_parser():
    written = synopsis_options(code_block("What `wsi-score` does"))
    actions = [action for action in parser()._actions if action.option_strings and action.dest != "help"]
    by_flag = {flag: action for action in actions for flag in action.option_strings}
    assert sorted(set(written) - set(by_flag)) == [], "in the synopsis, not in the parser"
    missing = [action.option_strings for action in actions if not set(action.option_strings) & set(written)]
    assert missing == [], "in the parser, not in the synopsis"
    for flag, value in written.items():
        action = by_flag[flag]
        assert (value is None) == (action.nargs == 0), f"{flag}: a switch in one, taking a value in the other"
        if action.choices is not None:
            assert value is not None and value.split("|") == list(action.choices), f"{flag}: other choices"
        elif value is not None and "|" in value:  # free values: each one the synopsis names, --help names
            for alternative in value.split("|"):
                assert alternative.replace("[", "").replace("]", "") in action.help, f"{flag} {alternative}"


@pytest.mark.slow
def test_the_python_api_example_runs(tmp_path):
    """The example as written (a local process cluster, the bundled model) on a slide named slide.svs."""
    make_slide(tmp_path / "slide.svs", 2400, 1800, 0.5, [(900, 700, 1400, 1100)])
    example = code_block("Python API", "python")
    check = """
import json
print(json.dumps({"patches": patches.shape, "probs": probs.shape, "status": [r.status for r in results],
                  "scored": int(heatmap.tissue.sum()), "boxes": len(boxes)}))
"""
    run = subprocess.run(
        [sys.executable, "-c", example + check], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.splitlines()[-1])
    assert seen["patches"][1:] == [96, 96, 3] and seen["probs"] == [seen["patches"][0], 2]
    assert seen["status"] == ["ok"] and seen["scored"] == seen["boxes"] > 0
    assert (tmp_path / "results" / "slide.zarr").is_dir()


def test_synopsis_options_reads_switches_values_and_choices():
    options = synopsis_options("cmd X [...] -o OUT [--device auto|cuda[:N]] [--tta] [-q]")
    assert options == {"-o": "OUT", "--device": "auto|cuda[:N]", "--tta": None, "-q": None}
