"""config.toml (SPEC section 3): defaults, every class of problem with its key path.

``dicomnode check-config`` is tested in tests/test_cli.py, with the builders below.

Config files are written into ``tmp_path``; the zoo is the repository's ``models/`` folder
(``bicubic-x2``, ``nlm-denoise``) unless a test builds its own.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dicomnode.config import (
    Config,
    Destination,
    HttpConfig,
    NodeConfig,
    TlsConfig,
    WorkerConfig,
    check_files,
    is_loopback,
    load_config,
    parse_config,
)
from dicomnode.engine.cards import model_names
from dicomnode.errors import ConfigError
from dicomnode.scaffold import write_node_dir

REPO = Path(__file__).resolve().parents[1]
REPO_CONFIG = REPO / "config.toml"
ZOO = ("bicubic-x2", "nlm-denoise")

# --- building config files -------------------------------------------------------------------


def q(value: str) -> str:
    """A TOML basic string holding ``value`` (JSON string escapes are valid TOML)."""
    return json.dumps(value)


def keys(defaults: dict[str, str], overrides: dict[str, str | None]) -> str:
    """``key = value`` lines; an override of None leaves the key out."""
    merged = defaults | overrides
    return "\n".join(f"{k} = {v}" for k, v in merged.items() if v is not None)


def node(**overrides: str | None) -> str:
    return keys({"ae_title": q("MYNODE"), "port": "11112"}, overrides)


def dicom_dest(**overrides: str | None) -> str:
    defaults = {"name": q("pacs"), "type": q("dicom"), "ae_title": q("ORTHANC"),
                "host": q("127.0.0.1"), "port": "4242"}
    return "[[destinations]]\n" + keys(defaults, overrides)


def folder_dest(**overrides: str | None) -> str:
    defaults = {"name": q("outbox"), "type": q("folder"), "path": q("out")}
    return "[[destinations]]\n" + keys(defaults, overrides)


def rule(**overrides: str | None) -> str:
    defaults = {"name": q("mr"), "match": '{ Modality = "MR" }', "model": q("bicubic-x2"),
                "destinations": '["pacs"]'}
    return "[[rules]]\n" + keys(defaults, overrides)


def make_config(
    *,
    top: str = "",
    node_keys: str | None = None,
    tls: str | None = None,
    http: str = "",
    worker: str = "",
    destinations: str | None = None,
    rules: str | None = None,
) -> str:
    """A complete config: the minimal one of SPEC section 3 unless a part is replaced."""
    parts = [top, "[node]", node() if node_keys is None else node_keys]
    if tls is not None:
        parts += ["[node.tls]", tls]
    if http:
        parts += ["[http]", http]
    if worker:
        parts += ["[worker]", worker]
    parts.append(dicom_dest() if destinations is None else destinations)
    parts.append(rule() if rules is None else rules)
    return "\n".join(parts) + "\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, models: tuple[str, ...] | None = ZOO) -> Config:
    return load_config(write(tmp_path, text), models)


def problems(tmp_path: Path, text: str, models: tuple[str, ...] | None = ZOO) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, models)
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: {len(info.value.problems)} problem(s):")
    return info.value.problems


# --- what loads ---------------------------------------------------------------------------------


def test_repository_config_loads_with_the_spec_defaults() -> None:
    config = load_config(REPO_CONFIG, model_names(REPO / "models"))

    assert config.source == REPO_CONFIG
    assert config.node.ae_title == "DICOMNODE"
    assert config.node.host == "0.0.0.0"
    assert config.node.port == 11112
    assert config.node.storage_dir == Path("var")
    assert config.node.allowed_calling_aets == ()
    assert config.node.max_associations == 16
    assert config.node.series_idle_seconds == 30
    assert isinstance(config.node.series_idle_seconds, float)
    assert config.node.min_free_disk_mb == 1024
    assert config.node.retention_hours == 72
    assert config.node.tls is None
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8080)
    assert config.worker == WorkerConfig("auto", "auto", 8, 512, 1)
    # the file spells out the defaults, so it equals the built-in ones
    assert (config.node, config.http, config.worker) == (NodeConfig(), HttpConfig(),
                                                         WorkerConfig())
    assert config.destinations == (Destination("outbox", "folder", path=Path("var/outbox")),)
    assert [r.name for r in config.rules] == ["mr-superres"]
    assert config.rules[0].model in model_names(REPO / "models")
    assert config.rules[0].destinations == ("outbox",)
    assert config.rules[0].series_description_suffix == " [dicomnode SRx2]"


def test_minimal_config_loads_with_defaults_filled_in(tmp_path: Path) -> None:
    config = load(tmp_path, make_config())

    assert (config.node.ae_title, config.node.port) == ("MYNODE", 11112)
    assert config.node.host == "0.0.0.0"
    assert config.node.max_associations == 16
    assert config.node.series_idle_seconds == 30.0
    assert config.node.retention_hours == 72.0
    assert config.http == HttpConfig("127.0.0.1", 8080)
    assert config.worker.batch_size == 8
    assert config.worker.device == "auto"
    pacs = config.destination("pacs")
    assert pacs == Destination("pacs", "dicom", "ORTHANC", "127.0.0.1", 4242, "MYNODE")
    assert pacs.calling_ae_title == config.node.ae_title  # defaults to the node's AE title
    (mr,) = config.rules
    assert (mr.name, mr.model, mr.destinations) == ("mr", "bicubic-x2", ("pacs",))
    assert mr.series_description_suffix == " [dicomnode bicubic-x2]"
    with pytest.raises(KeyError):
        config.destination("nowhere")


def test_empty_file_gives_every_default_and_no_destinations_or_rules(tmp_path: Path) -> None:
    config = load(tmp_path, "")

    assert config == Config(source=tmp_path / "config.toml")
    assert config.destinations == () and config.rules == ()


def test_explicit_values_are_kept(tmp_path: Path) -> None:
    config = load(tmp_path, make_config(
        node_keys=node(ae_title=q(" EDGE "), port="1",
                       allowed_calling_aets='["MODALITY1", "PACS "]', min_free_disk_mb="0",
                       series_idle_seconds="0.5", storage_dir=q("/srv/dicomnode")),
        tls=keys({"cert": q("n.pem"), "key": q("n.key")}, {}),
        http="port = 65535",
        worker='device = "cuda:1"\nprecision = "bf16"\nbatch_size = 4096',
        destinations=dicom_dest(calling_ae_title=q("OTHER")) + "\n" + folder_dest(),
        rules=rule(destinations='["pacs", "outbox"]', series_description_suffix=q(" [x]")),
    ))

    assert config.node.ae_title == "EDGE"  # padding is not significant
    assert config.node.port == 1 and config.http.port == 65535
    assert config.node.allowed_calling_aets == ("MODALITY1", "PACS")
    assert config.node.min_free_disk_mb == 0
    assert config.node.series_idle_seconds == 0.5
    assert config.node.storage_dir == Path("/srv/dicomnode")
    assert config.node.tls == TlsConfig(Path("n.pem"), Path("n.key"), None)
    assert (config.worker.device, config.worker.precision) == ("cuda:1", "bf16")
    assert config.destination("pacs").calling_ae_title == "OTHER"
    assert config.destination("outbox") == Destination("outbox", "folder", path=Path("out"))
    assert config.rules[0].destinations == ("pacs", "outbox")
    assert config.rules[0].series_description_suffix == " [x]"


def test_parse_config_takes_an_already_parsed_document() -> None:
    raw = {"node": {"ae_title": "MYNODE", "port": 104},
           "destinations": [{"name": "out", "type": "folder", "path": "o"}],
           "rules": [{"name": "all", "model": "nlm-denoise", "destinations": ["out"]}]}
    config = parse_config(raw, ZOO)
    assert config.source is None
    assert config.rules[0].match == ()
    assert config.rules[0].matches({}) and config.rules[0].matches({"Modality": "CT"})

    with pytest.raises(ConfigError) as info:
        parse_config({"node": {"port": 0}})
    assert info.value.source == "config"
    assert info.value.problems == ["node.port: expected an integer 1-65535, got 0"]


# --- unknown keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(("parts", "expected"), [
    pytest.param({"top": "nodes = 1"}, "nodes: unknown key; did you mean 'node'?", id="top"),
    pytest.param({"node_keys": node(ae_tite=q("X"))},
                 "node.ae_tite: unknown key; did you mean 'ae_title'?", id="node"),
    pytest.param({"http": "prot = 8080"}, "http.prot: unknown key; did you mean 'port'?",
                 id="http"),
    pytest.param({"worker": "batchsize = 4"},
                 "worker.batchsize: unknown key; did you mean 'batch_size'?", id="worker"),
    pytest.param({"worker": 'colour = "blue"'}, "worker.colour: unknown key",
                 id="worker-no-suggestion"),
    pytest.param({"tls": 'cert = "n.pem"\nkey = "n.key"\ncrt = "x"'},
                 "node.tls.crt: unknown key; did you mean 'cert'?", id="node.tls"),
    pytest.param({"destinations": dicom_dest(calling_ae=q("X"))},
                 "destinations[0].calling_ae: unknown key; did you mean 'calling_ae_title'?",
                 id="dicom-destination"),
    pytest.param({"destinations": dicom_dest() + "\n" + folder_dest(paht=q("x"))},
                 "destinations[1].paht: unknown key; did you mean 'path'?",
                 id="folder-destination"),
    pytest.param({"rules": rule(modle=q("x"))},
                 "rules[0].modle: unknown key; did you mean 'model'?", id="rule"),
    pytest.param({"rules": rule(suffix=q("x"))}, "rules[0].suffix: unknown key",
                 id="rule-no-suggestion"),
])
def test_unknown_keys_are_refused_at_every_level(
    tmp_path: Path, parts: dict[str, str], expected: str
) -> None:
    assert problems(tmp_path, make_config(**parts)) == [expected]


@pytest.mark.parametrize(("destination", "expected"), [
    pytest.param(dicom_dest(path=q("out")), "destinations[0].path: unknown key", id="dicom"),
    pytest.param(folder_dest(name=q("pacs"), host=q("h"), port="104"),
                 "destinations[0].host: unknown key", id="folder"),
])
def test_a_key_of_the_other_destination_type_is_unknown(
    tmp_path: Path, destination: str, expected: str
) -> None:
    found = problems(tmp_path, make_config(destinations=destination))
    assert expected in found
    assert all(p.endswith(": unknown key") for p in found)


# --- wrong types --------------------------------------------------------------------------------


@pytest.mark.parametrize(("parts", "expected"), [
    pytest.param({"destinations": dicom_dest() + "\n" + dicom_dest(name=q("pacs2"),
                                                                    port=q("eleven"))},
                 'destinations[1].port: expected an integer 1-65535, got "eleven"',
                 id="string-port"),
    pytest.param({"node_keys": node(port="true")},
                 "node.port: expected an integer 1-65535, got True", id="bool-port"),
    pytest.param({"worker": "batch_size = true"},
                 "worker.batch_size: expected an integer 1-4096, got True", id="bool-int"),
    pytest.param({"node_keys": node(series_idle_seconds="false")},
                 "node.series_idle_seconds: expected a number 0.1-86400, got False",
                 id="bool-number"),
    pytest.param({"node_keys": node(max_associations="2.5")},
                 "node.max_associations: expected an integer 1-1000, got 2.5", id="float-int"),
    pytest.param({"node_keys": node(series_idle_seconds=q("30"))},
                 'node.series_idle_seconds: expected a number 0.1-86400, got "30"',
                 id="string-number"),
    pytest.param({"node_keys": node(host='{ name = "x" }')},
                 "node.host: expected a string, got {'name': 'x'}", id="table-string"),
    pytest.param({"http": "host = 8080"}, "http.host: expected a string, got 8080",
                 id="int-string"),
    pytest.param({"node_keys": node(storage_dir='["var"]')},
                 "node.storage_dir: expected a string, got ['var']", id="array-string"),
    pytest.param({"node_keys": node(ae_title="104")},
                 "node.ae_title: expected a string, got 104", id="int-ae-title"),
    pytest.param({"worker": "device = 0"}, "worker.device: expected a string, got 0",
                 id="int-device"),
    pytest.param({"node_keys": node(host=q(" "))}, 'node.host: must not be empty, got " "',
                 id="empty-host"),
    pytest.param({"node_keys": node(allowed_calling_aets=q("ANY"))},
                 'node.allowed_calling_aets: expected an array, got "ANY"', id="string-array"),
    pytest.param({"node_keys": node(allowed_calling_aets="[1]")},
                 "node.allowed_calling_aets[0]: expected an AE title string, got 1",
                 id="array-item"),
    pytest.param({"top": 'worker = "fast"'}, 'worker: expected a table [worker], got "fast"',
                 id="string-table"),
    pytest.param({"top": "http = 8080"}, "http: expected a table [http], got 8080",
                 id="int-table"),
    pytest.param({"tls": None, "node_keys": node(tls=q("on"))},
                 'node.tls: expected a table [node.tls], got "on"', id="string-tls"),
    pytest.param({"destinations": '[destinations]\nname = "pacs"', "rules": ""},
                 "destinations: expected an array of tables [[destinations]], "
                 "got {'name': 'pacs'}", id="destinations-table"),
    pytest.param({"top": 'destinations = ["pacs"]', "destinations": "", "rules": ""},
                 "destinations[0]: expected a table, got 'pacs'", id="destination-string"),
    pytest.param({"top": "rules = 1", "rules": ""},
                 "rules: expected an array of tables [[rules]], got 1", id="rules-int"),
    pytest.param({"top": 'rules = ["mr"]', "rules": ""},
                 "rules[0]: expected a table, got 'mr'", id="rule-string"),
    pytest.param({"destinations": dicom_dest(type="1")},
                 "destinations[0].type: expected a string, got 1", id="int-type"),
    pytest.param({"rules": rule(destinations=q("pacs"))},
                 'rules[0].destinations: expected an array, got "pacs"', id="rule-targets"),
    pytest.param({"rules": rule(destinations="[1]")},
                 "rules[0].destinations[0]: expected a string, got 1", id="rule-target"),
    pytest.param({"rules": rule(match=q("MR"))},
                 "rules[0].match: expected a table of DICOM keyword = value, got 'MR'",
                 id="match-string"),
    pytest.param({"rules": rule(match="{ Modality = true }")},
                 'rules[0].match.Modality: expected a string, number or "re:PATTERN", '
                 "got True", id="match-bool"),
    pytest.param({"rules": rule(series_description_suffix="2")},
                 "rules[0].series_description_suffix: expected a string, got 2",
                 id="int-suffix"),
])
def test_wrong_types_are_refused(tmp_path: Path, parts: dict[str, str], expected: str) -> None:
    assert problems(tmp_path, make_config(**parts)) == [expected]


# --- out-of-range values ------------------------------------------------------------------------


@pytest.mark.parametrize(("parts", "expected"), [
    pytest.param({"node_keys": node(port="0")},
                 "node.port: expected an integer 1-65535, got 0", id="port-0"),
    pytest.param({"node_keys": node(port="70000")},
                 "node.port: expected an integer 1-65535, got 70000", id="port-70000"),
    pytest.param({"http": "port = 0"}, "http.port: expected an integer 1-65535, got 0",
                 id="http-port-0"),
    pytest.param({"destinations": dicom_dest(port="65536")},
                 "destinations[0].port: expected an integer 1-65535, got 65536",
                 id="destination-port"),
    pytest.param({"node_keys": node(max_associations="0")},
                 "node.max_associations: expected an integer 1-1000, got 0",
                 id="max-associations-0"),
    pytest.param({"node_keys": node(min_free_disk_mb="-1")},
                 "node.min_free_disk_mb: expected an integer 0-1000000000, got -1",
                 id="negative-free-disk"),
    pytest.param({"node_keys": node(series_idle_seconds="0")},
                 "node.series_idle_seconds: expected a number 0.1-86400, got 0",
                 id="series-idle-0"),
    pytest.param({"node_keys": node(series_idle_seconds="nan")},
                 "node.series_idle_seconds: expected a number 0.1-86400, got nan",
                 id="series-idle-nan"),
    pytest.param({"node_keys": node(retention_hours="0")},
                 "node.retention_hours: expected a number 0.01-1000000, got 0",
                 id="retention-0"),
    pytest.param({"worker": "batch_size = 0"},
                 "worker.batch_size: expected an integer 1-4096, got 0", id="batch-size-0"),
    pytest.param({"worker": "tile_size = 16"},
                 "worker.tile_size: expected an integer 32-16384, got 16", id="tile-size-16"),
    pytest.param({"worker": "workers = 0"},
                 "worker.workers: expected an integer 1-256, got 0", id="workers-0"),
])
def test_out_of_range_values_are_refused(
    tmp_path: Path, parts: dict[str, str], expected: str
) -> None:
    assert problems(tmp_path, make_config(**parts)) == [expected]


# --- AE titles ----------------------------------------------------------------------------------

AE_TITLE_PLACES = {
    "node.ae_title": lambda v: {"node_keys": node(ae_title=v)},
    "destinations[0].ae_title": lambda v: {"destinations": dicom_dest(ae_title=v)},
    "destinations[0].calling_ae_title": lambda v: {
        "destinations": dicom_dest(calling_ae_title=v)},
    "node.allowed_calling_aets[1]": lambda v: {
        "node_keys": node(allowed_calling_aets=f'["GOOD", {v}]')},
}
BAD_AE_TITLES = {
    "too-long": ("A" * 17, "an AE title has at most 16 characters, this has 17"),
    "empty": ("", "an AE title must not be empty"),
    "blank": ("    ", "an AE title must not be empty"),
    "backslash": ("AB\\CD", "an AE title holds printable ASCII only, without backslash"),
    "non-ascii": ("ÄRZTE", "an AE title holds printable ASCII only, without backslash"),
    "control": ("AB\tCD", "an AE title holds printable ASCII only, without backslash"),
}


@pytest.mark.parametrize("place", list(AE_TITLE_PLACES))
@pytest.mark.parametrize("case", list(BAD_AE_TITLES))
def test_bad_ae_titles_are_refused_everywhere(tmp_path: Path, place: str, case: str) -> None:
    value, reason = BAD_AE_TITLES[case]
    found = problems(tmp_path, make_config(**AE_TITLE_PLACES[place](q(value))))
    shown = '"' + value + '"'
    assert found == [f"{place}: {reason}, got {shown}"]


def test_an_ae_title_of_16_characters_is_accepted(tmp_path: Path) -> None:
    config = load(tmp_path, make_config(node_keys=node(ae_title=q("A" * 16))))
    assert config.node.ae_title == "A" * 16
    assert config.destinations[0].calling_ae_title == "A" * 16


# --- worker device and precision ----------------------------------------------------------------


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:12", "mps"])
def test_valid_devices_are_accepted(tmp_path: Path, device: str) -> None:
    assert load(tmp_path, make_config(worker=f"device = {q(device)}")).worker.device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CUDA", "cuda:1 ", "cpu\n", ""])
def test_invalid_devices_are_refused(tmp_path: Path, device: str) -> None:
    assert problems(tmp_path, make_config(worker=f"device = {q(device)}")) == [
        f'worker.device: expected auto, cpu, cuda, cuda:N or mps, got "{device}"'
    ]


@pytest.mark.parametrize("precision", ["auto", "fp32", "fp16", "bf16"])
def test_valid_precisions_are_accepted(tmp_path: Path, precision: str) -> None:
    config = load(tmp_path, make_config(worker=f"precision = {q(precision)}"))
    assert config.worker.precision == precision


@pytest.mark.parametrize("precision", ["fp8", "FP16", "int8", "half"])
def test_invalid_precisions_are_refused(tmp_path: Path, precision: str) -> None:
    assert problems(tmp_path, make_config(worker=f"precision = {q(precision)}")) == [
        f'worker.precision: expected one of auto, fp32, fp16, bf16, got "{precision}"'
    ]


@pytest.mark.parametrize("runtime", ["auto", "torch", "onnxruntime"])
def test_valid_runtimes_are_accepted(tmp_path: Path, runtime: str) -> None:
    config = load(tmp_path, make_config(worker=f"runtime = {q(runtime)}"))
    assert config.worker.runtime == runtime


def test_the_runtime_defaults_to_auto(tmp_path: Path) -> None:
    assert load(tmp_path, make_config()).worker.runtime == "auto"


@pytest.mark.parametrize("runtime", ["ort", "ONNXRuntime", "openvino", ""])
def test_invalid_runtimes_are_refused(tmp_path: Path, runtime: str) -> None:
    assert problems(tmp_path, make_config(worker=f"runtime = {q(runtime)}")) == [
        "worker.runtime: expected one of auto, torch, onnxruntime (auto: ONNX Runtime where it "
        f'measures 1.5x faster than torch on a CPU), got "{runtime}"'
    ]


def test_init_writes_the_runtime_key(tmp_path: Path) -> None:
    write_node_dir(tmp_path / "node")
    text = (tmp_path / "node" / "config.toml").read_text(encoding="utf-8")
    assert 'runtime = "auto"' in text
    assert load_config(tmp_path / "node" / "config.toml", None).worker.runtime == "auto"


# --- destinations -------------------------------------------------------------------------------


def test_destination_without_name_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, make_config(destinations=dicom_dest(name=None), rules=""))
    assert found == ["destinations[0].name: required key is missing"]


def test_dicom_destination_needs_host_port_and_ae_title(tmp_path: Path) -> None:
    found = problems(tmp_path, make_config(
        destinations=dicom_dest(ae_title=None, host=None, port=None)))
    assert found == [
        "destinations[0].ae_title: required key is missing",
        "destinations[0].host: required key is missing",
        "destinations[0].port: required key is missing",
    ]


def test_destination_type_defaults_to_dicom(tmp_path: Path) -> None:
    config = load(tmp_path, make_config(destinations=dicom_dest(type=None)))
    assert config.destinations[0].type == "dicom"
    found = problems(tmp_path, make_config(destinations=folder_dest(type=None), rules=""))
    assert found == [
        "destinations[0].path: unknown key",
        "destinations[0].ae_title: required key is missing",
        "destinations[0].host: required key is missing",
        "destinations[0].port: required key is missing",
    ]


def test_folder_destination_needs_a_path(tmp_path: Path) -> None:
    found = problems(tmp_path, make_config(destinations=folder_dest(path=None), rules=""))
    assert found == ["destinations[0].path: required key is missing"]
    found = problems(tmp_path, make_config(destinations=folder_dest(path=q("")), rules=""))
    assert found == ['destinations[0].path: must not be empty, got ""']


def test_unknown_destination_type_is_one_problem(tmp_path: Path) -> None:
    destination = folder_dest(name=q("pacs"), type=q("ftp"), colour=q("blue"))
    found = problems(tmp_path, make_config(destinations=destination))
    # no follow-on "required key is missing" for a type the node does not know,
    # and the rule naming it is not told that it "is not defined"
    assert found == [
        'destinations[0].type: expected dicom, folder or dicomweb, got "ftp"',
        "destinations[0].colour: unknown key",
    ]


def test_duplicate_destination_names_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, make_config(
        destinations="\n".join([dicom_dest(), folder_dest(), folder_dest(name=q("pacs"))])))
    assert found == ["destinations[2].name: duplicate destination name 'pacs'"]


@pytest.mark.parametrize("name", ["my pacs", "-pacs", "pacs/1", "x" * 65])
def test_invalid_destination_names_are_refused(tmp_path: Path, name: str) -> None:
    found = problems(tmp_path, make_config(destinations=dicom_dest(name=q(name)),
                                           rules=rule(destinations=f"[{q(name)}]")))
    assert found == [
        f"destinations[0].name: expected 1-64 letters, digits, '_', '-' or '.', "
        f'starting with a letter or digit, got "{name}"'
    ]


# --- rules --------------------------------------------------------------------------------------


def test_duplicate_rule_names_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, make_config(rules=rule() + "\n" + rule(model=q("nlm-denoise"))))
    assert found == ["rules[1].name: duplicate rule name 'mr'"]


@pytest.mark.parametrize(("target", "expected"), [
    ("pcas", "rules[0].destinations[0]: no destination named 'pcas' is defined; "
             "did you mean 'pacs'?"),
    ("nowhere", "rules[0].destinations[0]: no destination named 'nowhere' is defined"),
])
def test_undefined_destination_is_refused(tmp_path: Path, target: str, expected: str) -> None:
    assert problems(tmp_path, make_config(rules=rule(destinations=f"[{q(target)}]"))) == [
        expected
    ]


def test_a_rule_naming_a_destination_with_problems_only_reports_the_destination(
    tmp_path: Path,
) -> None:
    found = problems(tmp_path, make_config(destinations=dicom_dest(port=q("eleven"))))
    assert found == ['destinations[0].port: expected an integer 1-65535, got "eleven"']


def test_rule_needs_at_least_one_destination(tmp_path: Path) -> None:
    assert problems(tmp_path, make_config(rules=rule(destinations="[]"))) == [
        "rules[0].destinations: name at least one destination"
    ]
    assert problems(tmp_path, make_config(rules=rule(destinations=None))) == [
        "rules[0].destinations: required key is missing"
    ]


def test_rule_needs_a_name_and_a_model(tmp_path: Path) -> None:
    assert problems(tmp_path, make_config(rules=rule(name=None, model=None))) == [
        "rules[0].name: required key is missing",
        "rules[0].model: required key is missing",
    ]


def test_model_missing_from_the_zoo_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    text = make_config(rules=rule(model=q("bicubic-x3")))
    assert problems(tmp_path, text) == [
        "rules[0].model: no model 'bicubic-x3' in the model zoo; did you mean 'bicubic-x2'?"
    ]
    assert problems(tmp_path, make_config(rules=rule(model=q("mr-sr-x2")))) == [
        "rules[0].model: no model 'mr-sr-x2' in the model zoo"
    ]
    # without a zoo to check against, any model name is accepted
    assert load(tmp_path, text, models=None).rules[0].model == "bicubic-x3"


@pytest.mark.parametrize(("match", "expected"), [
    ('{ Modalty = "MR" }',
     "rules[0].match.Modalty: 'Modalty' is not a DICOM keyword; did you mean 'Modality'?"),
    ('{ SeriesDescriptoin = "t1" }',
     "rules[0].match.SeriesDescriptoin: 'SeriesDescriptoin' is not a DICOM keyword; "
     "did you mean 'SeriesDescription'?"),
    ('{ Colour = "blue" }', "rules[0].match.Colour: 'Colour' is not a DICOM keyword"),
])
def test_unknown_dicom_keyword_in_match_is_refused(
    tmp_path: Path, match: str, expected: str
) -> None:
    assert problems(tmp_path, make_config(rules=rule(match=match))) == [expected]


def test_invalid_regex_in_match_is_refused(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, make_config(rules=rule(match='{ SeriesDescription = "re:(" }')))
    assert found.startswith(
        "rules[0].match.SeriesDescription: invalid regular expression 're:(': "
    )
    assert "missing )" in found


def test_regex_rule_matches_by_search(tmp_path: Path) -> None:
    config = load(tmp_path, make_config(rules=rule(match='{ SeriesDescription = "re:^t1_" }')))
    (mr,) = config.rules

    assert mr.matches({"SeriesDescription": "t1_fl2d_sag"})
    assert not mr.matches({"SeriesDescription": "ax_t1_fl2d"})  # anchored
    assert not mr.matches({"SeriesDescription": "T1_fl2d_sag"})  # a regex is case-sensitive
    assert not mr.matches({})


def test_exact_match_is_case_insensitive_and_needs_every_key(tmp_path: Path) -> None:
    match = '{ Modality = "MR", BodyPartExamined = "Knee", EchoNumbers = 1 }'
    (mr,) = load(tmp_path, make_config(rules=rule(match=match))).rules

    assert [c.keyword for c in mr.match] == ["Modality", "BodyPartExamined", "EchoNumbers"]
    assert mr.matches({"Modality": "mr", "BodyPartExamined": "KNEE ", "EchoNumbers": 1})
    assert mr.matches({"Modality": "MR", "BodyPartExamined": "knee", "EchoNumbers": "1"})
    assert not mr.matches({"Modality": "MR", "BodyPartExamined": "KNEE"})
    assert not mr.matches({"Modality": "CT", "BodyPartExamined": "KNEE", "EchoNumbers": 1})
    assert not mr.matches({"Modality": "MRI", "BodyPartExamined": "KNEE", "EchoNumbers": 1})


# --- [node.tls] ---------------------------------------------------------------------------------


def test_tls_needs_cert_and_key(tmp_path: Path) -> None:
    assert problems(tmp_path, make_config(tls='cert = "n.pem"')) == [
        "node.tls.key: required when [node.tls] is present"
    ]
    assert problems(tmp_path, make_config(tls="")) == [
        "node.tls.cert: required when [node.tls] is present",
        "node.tls.key: required when [node.tls] is present",
    ]
    assert problems(tmp_path, make_config(tls='cert = "n.pem"\nkey = ""')) == [
        'node.tls.key: must not be empty, got ""'
    ]


def test_tls_with_a_ca_requires_client_certificates(tmp_path: Path) -> None:
    config = load(tmp_path, make_config(tls='cert = "n.pem"\nkey = "n.key"\nca = "ca.pem"'))
    assert config.node.tls == TlsConfig(Path("n.pem"), Path("n.key"), Path("ca.pem"))


# --- the file itself ----------------------------------------------------------------------------


def test_toml_syntax_error_is_one_readable_problem(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nport = = 104\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (found,) = info.value.problems
    assert found.startswith("not valid TOML: ")
    assert "line 2" in found
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: 1 problem(s):\n  - not valid TOML: ")


def test_missing_file_is_one_readable_problem(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["file not found; create it or pass --config PATH"]
    assert info.value.source == str(path)
    assert str(path) in str(info.value)


def test_unreadable_file_is_one_readable_problem(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[node]\nae_title = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (found,) = info.value.problems
    assert found.startswith("cannot read the file: ")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = make_config(
        top="nodes = 1",
        node_keys=node(port="0", ae_tite=q("X")),
        http='port = "x"',
        worker='device = "gpu"\nprecision = "fp8"',
        destinations=dicom_dest(host=None) + "\n" + folder_dest(name=q("pacs")),
        rules=rule(model=q("mr-sr-x2"), destinations='["pcas"]', match='{ Modalty = "MR" }'),
    )
    found = problems(tmp_path, text)

    assert found == [
        "nodes: unknown key; did you mean 'node'?",
        "node.ae_tite: unknown key; did you mean 'ae_title'?",
        "node.port: expected an integer 1-65535, got 0",
        'http.port: expected an integer 1-65535, got "x"',
        'worker.device: expected auto, cpu, cuda, cuda:N or mps, got "gpu"',
        'worker.precision: expected one of auto, fp32, fp16, bf16, got "fp8"',
        "destinations[0].host: required key is missing",
        "destinations[1].name: duplicate destination name 'pacs'",
        "rules[0].model: no model 'mr-sr-x2' in the model zoo",
        "rules[0].match.Modalty: 'Modalty' is not a DICOM keyword; did you mean 'Modality'?",
        "rules[0].destinations[0]: no destination named 'pcas' is defined; did you mean 'pacs'?",
    ]
    assert len(found) == 11


# --- immutability -------------------------------------------------------------------------------


def test_config_objects_are_frozen(tmp_path: Path) -> None:
    config = load(tmp_path, make_config(tls='cert = "n.pem"\nkey = "n.key"'))
    assert config.node.tls is not None

    targets: list[tuple[object, str, object]] = [
        (config, "node", NodeConfig()),
        (config.node, "port", 1),
        (config.node.tls, "key", Path("other.key")),
        (config.http, "host", "0.0.0.0"),
        (config.worker, "device", "cpu"),
        (config.destinations[0], "host", "evil.example"),
        (config.rules[0], "model", "nlm-denoise"),
        (config.rules[0].match[0], "expected", "CT"),
    ]
    for obj, name, value in targets:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, value)
    # the collections are tuples, so they cannot be changed in place either
    assert isinstance(config.destinations, tuple) and isinstance(config.rules, tuple)
    assert isinstance(config.node.allowed_calling_aets, tuple)
    assert isinstance(config.rules[0].destinations, tuple)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("192.0.2.10", False), ("node.example.org", False)])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_off_loopback_needs_a_token_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"http": {"host": "0.0.0.0"}})
    assert info.value.problems[0].startswith("http.token_file: required when http.host is not")
    config = parse_config({"http": {"host": "0.0.0.0", "token_file": "t", "show_phi": True}})
    assert config.http.token_file == Path("t") and config.http.show_phi
    assert not parse_config({}).http.show_phi  # names stay hidden by default


def test_token_file_must_be_private(tmp_path: Path) -> None:
    token = tmp_path / "token"
    config = parse_config({"http": {"token_file": str(token)}})
    assert check_files(config) == [f"http.token_file: file {token} does not exist"]
    token.write_text("x\n")
    token.chmod(0o640)
    assert check_files(config) == []
