import json
import subprocess
import sys

import pytest

from gsil import cli
from gsil.io import atomic_path, read_json, write_json, write_jsonl
from gsil.logutil import GsilError
from gsil.runinfo import write_run_info


def test_every_stage_module_exposes_the_cli_hooks():
    import importlib

    for name, (module_name, _) in cli.STAGES.items():
        module = importlib.import_module(f"gsil.stages.{module_name}")
        assert callable(module.add_arguments), name
        assert callable(module.run), name


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "gsil", "--help"], capture_output=True, text=True, check=True)
    for name in cli.STAGES:
        assert name in out.stdout


def test_no_stage_prints_help_and_fails(capsys):
    assert cli.main([]) == 2


def test_user_error_is_reported_without_traceback(monkeypatch, capsys):
    def boom(args):
        raise GsilError("data.jsonl:3: field 'prompt' is missing")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda command=None: _parser_with(parser, command, boom))
    assert cli.main(["aggregate"]) == 1
    err = capsys.readouterr().err
    assert "data.jsonl:3" in err and "Traceback" not in err


def _parser_with(parser, command, fn):
    parser.set_defaults(_run=fn)
    return parser


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_whole(tmp_path):
    target = tmp_path / "model"
    for text in ("first", "second"):
        with atomic_path(target, is_dir=True) as tmp:
            (tmp / "weights").write_text(text)
    assert (target / "weights").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_json_helpers_and_run_info(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    assert read_json(tmp_path / "a.json") == {"x": 1}
    assert write_jsonl(tmp_path / "rows.jsonl", [{"i": i} for i in range(3)]) == 3
    lines = (tmp_path / "rows.jsonl").read_text().splitlines()
    assert [json.loads(line)["i"] for line in lines] == [0, 1, 2]
    write_run_info(tmp_path, {"lr": 0.1})
    info = read_json(tmp_path / "run_info.json")
    assert info["settings"] == {"lr": 0.1}
    assert "torch" in info["packages"]


def test_iter_jsonl_names_the_bad_line(tmp_path):
    from gsil.io import iter_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{broken\n')
    rows = iter_jsonl(path)
    assert next(rows) == (f"{path}:1", {"a": 1})
    assert next(rows) == (f"{path}:3", {"a": 2})
    with pytest.raises(GsilError, match=r"rows.jsonl:4: not valid JSON"):
        next(rows)
