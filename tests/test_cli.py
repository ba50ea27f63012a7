"""The ``dicomnode`` command line (dicomnode.cli): exit codes, messages, check-config, models.

Exit codes: 0 success, 1 a config, model or data problem with a message naming what to fix,
2 a usage error. The commands that need a running node or a PACS (``serve``, ``echo``,
``status`` on a live index) are tested against real peers in tests/node/test_cli_node.py;
``enhance`` in tests/test_enhance.py; ``init`` in tests/test_scaffold.py.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicomnode import __version__, cli
from dicomnode.cli import main
from dicomnode.engine.cards import default_zoo_dir, model_names
from dicomnode.spool import Spool
from tests.test_config import REPO_CONFIG, dicom_dest, make_config, node, q, rule, write

Cli = Callable[..., tuple[int, str, str]]
CheckConfig = Callable[[Path], tuple[int, str, str]]


@pytest.fixture
def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Cli]:
    """Runs ``dicomnode ARGS`` in this process; returns (exit code, stdout, stderr)."""
    monkeypatch.delenv("DICOMNODE_MODELS", raising=False)  # the repository's zoo
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: usage errors, --help, --version
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return code, out, err

    yield run
    root.handlers[:] = handlers  # main() installs its own log handler on the root logger
    root.setLevel(level)


# --- exit codes and messages -------------------------------------------------------------------


def test_usage_errors_exit_2(run_cli: Cli, tmp_path: Path) -> None:
    code, _, err = run_cli()
    assert code == 2 and "usage: dicomnode" in err
    code, _, err = run_cli("enhance", str(tmp_path), str(tmp_path / "out"), "--model",
                           "nlm-denoise", "--device", "gpu0")
    assert code == 2 and "'gpu0': expected auto, cpu, cuda, cuda:N or mps" in err
    code, _, err = run_cli("status", "--log-level", "LOUD")
    assert code == 2 and "invalid choice: 'LOUD'" in err
    assert not (tmp_path / "out").exists()


def test_retry_needs_exactly_one_target(run_cli: Cli, tmp_path: Path) -> None:
    config = write(tmp_path, make_config())
    code, _, err = run_cli("retry", "--config", str(config))
    assert code == 2 and "give either SERIES_UID or --failed" in err
    code, _, err = run_cli("retry", "1.2.3", "--failed", "--config", str(config))
    assert code == 2 and "give either SERIES_UID or --failed" in err


def test_version(run_cli: Cli) -> None:
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"dicomnode {__version__}"


def test_a_config_error_exits_1_naming_the_file_and_the_problem(
        run_cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    code, out, err = run_cli("status", "--config", str(missing))
    assert code == 1 and out == ""
    assert err.startswith(f"dicomnode status: {missing}: 1 problem(s):\n  - file not found")
    bad = write(tmp_path, make_config(node_keys=node(port="0")))
    code, _, err = run_cli("retry", "--failed", "--config", str(bad))
    assert code == 1
    assert err.startswith(f"dicomnode retry: {bad}: 1 problem(s):\n  - node.port: ")


def test_status_and_retry_on_an_index(run_cli: Cli, tmp_path: Path) -> None:
    config = write(tmp_path, make_config(node_keys=node(storage_dir=q(str(tmp_path / "var")))))
    code, _, err = run_cli("status", "--config", str(config))
    assert code == 1 and "no index at" in err and "has not received anything yet" in err
    Spool(tmp_path / "var").close()  # an empty index, as a node leaves it
    code, out, _ = run_cli("status", "--json", "--config", str(config))
    status = json.loads(out)
    assert code == 0 and status["instances"] == 0 and status["series_list"] == []
    code, out, _ = run_cli("status", "--config", str(config))
    assert code == 0 and "instances: 0" in out and "jobs:    none" in out
    code, out, _ = run_cli("retry", "--failed", "--config", str(config))
    assert code == 0 and out.strip() == "re-queued 0 failed job(s)"


def test_an_interrupt_exits_1_with_a_message(
        run_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_open_index", interrupted)
    code, _, err = run_cli("retry", "--failed", "--config", str(write(tmp_path, make_config())))
    assert code == 1 and err == "dicomnode retry: interrupted\n"


# --- dicomnode models ---------------------------------------------------------------------------


def test_models_json_lists_every_card_of_the_zoo(run_cli: Cli) -> None:
    code, out, _ = run_cli("models", "--json")
    cards = json.loads(out)
    assert code == 0
    assert [c["name"] for c in cards] == model_names() and len(cards) >= 2
    for card in cards:
        assert set(card) == {"name", "version", "task", "scale", "modalities", "architecture",
                             "learned", "guards", "metrics", "description"}


def test_a_broken_card_is_named_and_hides_no_other(
        run_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zoo = tmp_path / "zoo"
    (zoo / "broken").mkdir(parents=True)
    (zoo / "broken" / "model.toml").write_text("name = [\n", encoding="utf-8")
    (zoo / "nlm-denoise").symlink_to(default_zoo_dir() / "nlm-denoise")  # the repository's
    monkeypatch.setenv("DICOMNODE_MODELS", str(zoo))
    code, out, err = run_cli("models", "--json")
    assert code == 1
    assert [c["name"] for c in json.loads(out)] == ["nlm-denoise"]
    assert err.startswith("dicomnode models: ") and "broken" in err and "cannot read" in err


def test_models_lists_the_zoo(run_cli: Cli):
    code, out, _ = run_cli("models", "--json")
    cards = {c["name"]: c for c in json.loads(out)}
    assert code == 0
    assert cards["bicubic-x2"]["task"] == "super-resolution" and cards["bicubic-x2"]["scale"] == 2
    assert cards["nlm-denoise"]["task"] == "denoise" and not cards["nlm-denoise"]["learned"]
    code, out, _ = run_cli("models")
    assert code == 0 and "nlm-denoise" in out


def test_console_script_usage_error_exits_2():
    script = Path(sys.executable).parent / "dicomnode"
    result = subprocess.run([str(script), "enhance"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage:" in result.stderr and "Traceback" not in result.stderr


# --- dicomnode check-config ---------------------------------------------------------------------

@pytest.fixture
def check_config(run_cli: Cli) -> CheckConfig:
    """Runs ``dicomnode check-config --config PATH``; returns (exit code, stdout, stderr)."""
    return lambda path: run_cli("check-config", "--config", str(path))


def test_check_config_accepts_the_repository_config(check_config: CheckConfig) -> None:
    code, out, _ = check_config(REPO_CONFIG)
    assert code == 0
    assert f"{REPO_CONFIG}: OK (1 destination(s), 1 rule(s))" in out


def test_check_config_reports_problems_with_their_key_path(
    tmp_path: Path, check_config: CheckConfig
) -> None:
    path = write(tmp_path, make_config(
        node_keys=node(ae_title=q("A" * 17)),
        destinations=dicom_dest(port=q("eleven")),
    ))
    code, out, err = check_config(path)
    assert code == 1
    assert out == ""
    assert f"dicomnode check-config: {path}: 2 problem(s):" in err
    assert "  - node.ae_title: an AE title has at most 16 characters, this has 17" in err
    assert '  - destinations[0].port: expected an integer 1-65535, got "eleven"' in err


def test_check_config_refuses_a_model_missing_from_the_zoo(
    tmp_path: Path, check_config: CheckConfig
) -> None:
    code, _, err = check_config(write(tmp_path, make_config(rules=rule(model=q("mr-sr-x9")))))
    assert code == 1
    assert "rules[0].model: no model 'mr-sr-x9' in the model zoo" in err


def test_check_config_loads_each_rules_model_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check_config: CheckConfig
) -> None:
    zoo = tmp_path / "zoo"
    (zoo / "broken").mkdir(parents=True)
    (zoo / "broken" / "model.toml").write_text('name = "broken"\n', encoding="utf-8")
    (zoo / "learned-x2").mkdir()
    (zoo / "learned-x2" / "model.toml").write_text(
        'name = "learned-x2"\nversion = "1.0.0"\ntask = "super-resolution"\nscale = 2\n'
        f'modalities = ["MR"]\n[architecture]\nname = "unet"\n[weights]\nsha256 = "{"0" * 64}"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("DICOMNODE_MODELS", str(zoo))
    path = write(tmp_path, make_config(
        rules=rule(model=q("broken")) + "\n" + rule(name=q("sr"), model=q("learned-x2"))))

    code, out, err = check_config(path)
    assert code == 1
    assert out == ""
    assert f"dicomnode check-config: {path}: 2 problem(s):" in err
    assert "  - rules[0].model: " in err and "invalid card" in err
    assert "  - rules[1].model: model 'learned-x2': weights file " in err
    assert "is missing" in err


def test_check_config_warns_when_onnxruntime_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check_config: CheckConfig
) -> None:
    path = write(tmp_path, make_config(worker='device = "cuda:1"\nruntime = "onnxruntime"'))
    code, out, err = check_config(path)
    assert code == 0  # the node runs: on torch
    assert "OK" in out
    assert ("warning: worker.runtime: 'onnxruntime' is used on CPU devices only; "
            "device = 'cuda:1' runs torch") in err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    code, _, err = check_config(write(tmp_path, make_config(worker='runtime = "auto"')))
    assert code == 0
    assert ("warning: worker.runtime: 'auto' needs the onnxruntime and onnx packages, which are "
            "not installed") in err
    code, _, err = check_config(write(tmp_path, make_config(worker='runtime = "torch"')))
    assert code == 0 and "worker.runtime" not in err


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param(None, "file not found; create it or pass --config PATH", id="missing"),
    pytest.param("[node\n", "not valid TOML: ", id="syntax"),
])
def test_check_config_reports_an_unusable_file(
    tmp_path: Path, check_config: CheckConfig, text: str | None, expected: str
) -> None:
    path = tmp_path / "config.toml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    code, out, err = check_config(path)
    assert code == 1
    assert out == ""
    assert f"dicomnode check-config: {path}: 1 problem(s):\n  - {expected}" in err


