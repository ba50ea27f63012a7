"""The node's configuration: ``config.toml`` parsed into one typed, frozen, checked object.

Every problem is collected with its key path and reported at once, so an administrator
fixes a config in one pass instead of one error per restart.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword

from dicomnode.engine.choices import DEVICE_PATTERN, PRECISION_CHOICES, RUNTIME_CHOICES
from dicomnode.errors import ConfigError

DESTINATION_TYPES = ("dicom", "folder", "dicomweb")
REGEX_PREFIX = "re:"


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    ca: Path | None = None


@dataclass(frozen=True)
class ClientTlsConfig:
    """TLS towards a destination: ``ca`` verifies it; ``cert``/``key`` if it wants ours."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class NodeConfig:
    ae_title: str = "DICOMNODE"
    host: str = "0.0.0.0"
    port: int = 11112
    storage_dir: Path = Path("var")
    allowed_calling_aets: tuple[str, ...] = ()
    max_associations: int = 16
    series_idle_seconds: float = 30.0
    min_free_disk_mb: int = 1024
    retention_hours: float = 72.0
    tls: TlsConfig | None = None


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    token_file: Path | None = None  # required when host is not loopback (SPEC section 10)
    show_phi: bool = False  # the status page shows patient names/IDs only when true

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; a name or 0.0.0.0 is not."""
    if host.strip().casefold() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WorkerConfig:
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    tile_size: int = 512
    workers: int = 1
    runtime: str = "auto"  # auto | torch | onnxruntime (learned models on a CPU)

    def load_options(self) -> dict[str, object]:
        """The keyword arguments of ``dicomnode.engine.load`` these settings give: the one
        mapping the node's workers and the Ray replicas both load models with."""
        return {"device": self.device, "precision": self.precision, "runtime": self.runtime,
                "tile": self.tile_size, "batch_size": self.batch_size}


@dataclass(frozen=True)
class ClusterConfig:
    """Where inference runs (SPEC section 10): the node's own worker threads, or Ray actors."""

    engine: str = "local"  # local | ray
    address: str = "auto"  # with engine = "ray": "auto" (this machine's Ray) or "host:port"


@dataclass(frozen=True)
class Destination:
    name: str
    type: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    calling_ae_title: str = ""
    path: Path | None = None
    tls: ClientTlsConfig | None = None  # DICOM TLS to this destination (extends SPEC 3)
    url: str = ""  # dicomweb: the DICOMweb service root (STOW-RS goes to url + "/studies")
    auth_file: Path | None = None  # dicomweb: a file holding a bearer token


@dataclass(frozen=True)
class MatchCondition:
    """One ``match`` entry: a DICOM keyword and an exact value (case-insensitive) or a regex."""

    keyword: str
    expected: str
    pattern: re.Pattern[str] | None = None

    def holds(self, value: object) -> bool:
        if value is None:
            text = ""
        elif isinstance(value, str | bytes | int | float):
            text = str(value).strip()
        else:  # multi-valued (ImageType ...): matched as DICOM writes it, values joined by "\\"
            text = "\\".join(str(v).strip() for v in value)
        if self.pattern is not None:
            return self.pattern.search(text) is not None
        return text.casefold() == self.expected.casefold()


@dataclass(frozen=True)
class Rule:
    name: str
    model: str
    destinations: tuple[str, ...]
    series_description_suffix: str
    match: tuple[MatchCondition, ...] = ()
    outputs: tuple[str, ...] = ("enhanced",)
    """Series written per source series: "enhanced", plus "difference" (SPEC section 10)."""

    @property
    def difference(self) -> bool:
        return "difference" in self.outputs

    def matches(self, attributes: Mapping[str, object]) -> bool:
        """True when every condition holds for the series' attributes (keyword -> value)."""
        return all(c.holds(attributes.get(c.keyword)) for c in self.match)


@dataclass(frozen=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    destinations: tuple[Destination, ...] = ()
    rules: tuple[Rule, ...] = ()
    source: Path | None = None
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def destination(self, name: str) -> Destination:
        for destination in self.destinations:
            if destination.name == name:
                return destination
        raise KeyError(name)


def load_config(path: str | Path, model_names: Collection[str] | None = None) -> Config:
    """Read and check ``path``; ``model_names`` (the zoo) lets rules be checked against it.

    Raises ConfigError listing every problem with its key path.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(["file not found; create it or pass --config PATH"], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read the file: {exc}"], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from None
    return parse_config(raw, model_names=model_names, source=path)


def parse_config(
    raw: Mapping[str, Any],
    model_names: Collection[str] | None = None,
    source: Path | None = None,
) -> Config:
    """Build a Config from an already-parsed TOML document (see load_config)."""
    checker = _Checker()
    checker.known_keys(raw, "", ("node", "http", "worker", "cluster", "destinations", "rules"))
    node = _parse_node(checker, checker.table(raw, "node", ""))
    http = _parse_http(checker, checker.table(raw, "http", ""))
    worker = _parse_worker(checker, checker.table(raw, "worker", ""))
    cluster = _parse_cluster(checker, checker.table(raw, "cluster", ""))
    destinations = _parse_destinations(checker, raw.get("destinations", []), node)
    rules = _parse_rules(
        checker, raw.get("rules", []), _declared_names(raw.get("destinations", [])), model_names
    )
    if checker.problems:
        raise ConfigError(checker.problems, str(source) if source else "config")
    return Config(node, http, worker, destinations, rules, source, cluster)


def _parse_node(c: _Checker, t: Mapping[str, Any]) -> NodeConfig:
    d = NodeConfig()
    c.known_keys(t, "node", (
        "ae_title", "host", "port", "storage_dir", "allowed_calling_aets", "max_associations",
        "series_idle_seconds", "min_free_disk_mb", "retention_hours", "tls",
    ))
    aets = c.get(t, "allowed_calling_aets", "node", list, d.allowed_calling_aets)
    checked_aets: list[str] = []
    for i, aet in enumerate(aets or ()):
        if c.check(isinstance(aet, str) and _ae_title_problem(aet) is None,
                   f"node.allowed_calling_aets[{i}]", _ae_title_problem(aet), aet):
            checked_aets.append(aet.strip())
    tls = None
    if isinstance(t.get("tls"), dict):
        tls = _parse_tls(c, t["tls"])
    elif "tls" in t:
        c.table(t, "tls", "node")  # reports the wrong type, not also cert and key as missing
    return NodeConfig(
        ae_title=c.ae_title(t, "ae_title", "node", d.ae_title),
        host=c.get(t, "host", "node", str, d.host, _non_empty),
        port=c.port(t, "port", "node", d.port),
        storage_dir=Path(c.get(t, "storage_dir", "node", str, str(d.storage_dir), _non_empty)),
        allowed_calling_aets=tuple(checked_aets),
        max_associations=c.integer(t, "max_associations", "node", d.max_associations, 1, 1000),
        series_idle_seconds=c.number(t, "series_idle_seconds", "node", d.series_idle_seconds,
                                     0.1, 86400),
        min_free_disk_mb=c.integer(t, "min_free_disk_mb", "node", d.min_free_disk_mb, 0, 10**9),
        retention_hours=c.number(t, "retention_hours", "node", d.retention_hours, 0.01, 10**6),
        tls=tls,
    )


def _parse_tls(c: _Checker, t: Mapping[str, Any]) -> TlsConfig | None:
    c.known_keys(t, "node.tls", ("cert", "key", "ca"))
    cert = c.get(t, "cert", "node.tls", str, None, _non_empty)
    key = c.get(t, "key", "node.tls", str, None, _non_empty)
    ca = c.get(t, "ca", "node.tls", str, None, _non_empty)
    for name, value in (("cert", cert), ("key", key)):
        if value is None and name not in t:
            c.problems.append(f"node.tls.{name}: required when [node.tls] is present")
    if cert is None or key is None:
        return None
    return TlsConfig(Path(cert), Path(key), Path(ca) if ca else None)


def _parse_client_tls(c: _Checker, t: Mapping[str, Any], path: str) -> ClientTlsConfig | None:
    c.known_keys(t, path, ("cert", "key", "ca"))
    cert = c.get(t, "cert", path, str, None, _non_empty)
    key = c.get(t, "key", path, str, None, _non_empty)
    ca = c.get(t, "ca", path, str, None, _non_empty, required=True)
    if (cert is None) != (key is None):
        c.problems.append(f"{path}: give both cert and key, or neither")
    if ca is None:
        return None
    return ClientTlsConfig(Path(ca), Path(cert) if cert else None, Path(key) if key else None)


def check_files(config: Config) -> list[str]:
    """File-system checks done at start (parsing stays pure): TLS files exist and private
    keys are not readable by every user."""
    problems = []
    entries: list[tuple[str, TlsConfig | ClientTlsConfig]] = []
    if config.node.tls is not None:
        entries.append(("node.tls", config.node.tls))
    entries += [(f"destinations[{i}].tls", d.tls) for i, d in enumerate(config.destinations)
                if d.tls is not None]
    if config.http.token_file is not None:
        problems += _secret_file_problems("http.token_file", config.http.token_file)
    for i, d in enumerate(config.destinations):
        if d.auth_file is not None:
            problems += _secret_file_problems(f"destinations[{i}].auth_file", d.auth_file)
    for where, tls in entries:
        for name in ("cert", "key", "ca"):
            path = getattr(tls, name)
            if path is None:
                continue
            if not path.is_file():
                problems.append(f"{where}.{name}: file {path} does not exist")
            elif name == "key" and path.stat().st_mode & 0o004:
                problems.append(
                    f"{where}.key: {path} is readable by every user "
                    f"(mode {path.stat().st_mode & 0o777:o}); run chmod 600 {path}")
    return problems


def _secret_file_problems(where: str, path: Path) -> list[str]:
    """A token file must exist and not be readable by every user."""
    if not path.is_file():
        return [f"{where}: file {path} does not exist"]
    if path.stat().st_mode & 0o004:
        return [f"{where}: {path} is readable by every user "
                f"(mode {path.stat().st_mode & 0o777:o}); run chmod 600 {path}"]
    return []


def _parse_http(c: _Checker, t: Mapping[str, Any]) -> HttpConfig:
    d = HttpConfig()
    c.known_keys(t, "http", ("host", "port", "token_file", "show_phi"))
    host = c.get(t, "host", "http", str, d.host, _non_empty)
    token = c.get(t, "token_file", "http", str, "")
    if not token.strip() and not is_loopback(host):
        c.problems.append(
            f"http.token_file: required when http.host is not loopback (got host {host!r}): "
            "name a file holding a bearer token, or set host = \"127.0.0.1\"")
    return HttpConfig(
        host=host,
        port=c.port(t, "port", "http", d.port),
        token_file=Path(token) if token.strip() else None,
        show_phi=c.get(t, "show_phi", "http", bool, d.show_phi),
    )


def _parse_worker(c: _Checker, t: Mapping[str, Any]) -> WorkerConfig:
    d = WorkerConfig()
    c.known_keys(t, "worker", ("device", "precision", "runtime", "batch_size", "tile_size",
                               "workers"))

    def device_problem(value: str) -> str | None:
        if DEVICE_PATTERN.match(value):
            return None
        return "expected auto, cpu, cuda, cuda:N or mps"

    def precision_problem(value: str) -> str | None:
        return (None if value in PRECISION_CHOICES
                else f"expected one of {', '.join(PRECISION_CHOICES)}")

    def runtime_problem(value: str) -> str | None:
        return (None if value in RUNTIME_CHOICES
                else f"expected one of {', '.join(RUNTIME_CHOICES)} (auto: ONNX Runtime where "
                     "it measures 1.5x faster than torch on a CPU)")

    return WorkerConfig(
        device=c.get(t, "device", "worker", str, d.device, device_problem),
        precision=c.get(t, "precision", "worker", str, d.precision, precision_problem),
        runtime=c.get(t, "runtime", "worker", str, d.runtime, runtime_problem),
        batch_size=c.integer(t, "batch_size", "worker", d.batch_size, 1, 4096),
        tile_size=c.integer(t, "tile_size", "worker", d.tile_size, 32, 16384),
        workers=c.integer(t, "workers", "worker", d.workers, 1, 256),
    )


CLUSTER_ENGINES = ("local", "ray")


def _parse_cluster(c: _Checker, t: Mapping[str, Any]) -> ClusterConfig:
    d = ClusterConfig()
    c.known_keys(t, "cluster", ("engine", "address"))
    engine = c.get(t, "engine", "cluster", str, d.engine,
                   lambda v: None if v in CLUSTER_ENGINES
                   else f"expected one of {', '.join(CLUSTER_ENGINES)}")
    address = c.get(t, "address", "cluster", str, d.address, _ray_address_problem)
    if engine == "ray" and not ray_installed():
        c.problems.append(
            "cluster.engine: \"ray\" needs the Ray package, which is not installed in this "
            "Python; run pip install 'dicomnode[cluster]' (or set engine = \"local\")")
    return ClusterConfig(engine=engine, address=address)


def ray_installed() -> bool:
    """Whether ``import ray`` would work, without importing it (a second of start-up)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _ray_address_problem(value: str) -> str | None:
    if value == "auto":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host.strip() or not port.isdigit() or not 1 <= int(port) <= 65535:
        return ("expected \"auto\" (the Ray cluster this machine joined with ray start) or "
                "\"host:port\" of the cluster's head (the port of ray start --head --port)")
    return None


def _named_tables(c: _Checker, raw: Any, key: str, what: str
                  ) -> Iterator[tuple[str, Mapping[str, Any], str | None]]:
    """Each table of the array of tables ``[[key]]`` with its key path and its ``name``
    (required, checked, unique among them; None when invalid). Tables that are not tables,
    or a ``key`` that is not an array of tables, are problems and yield nothing."""
    if not isinstance(raw, list):
        c.problems.append(f"{key}: expected an array of tables [[{key}]], got {raw!r}")
        return
    seen: set[str] = set()
    for i, t in enumerate(raw):
        p = f"{key}[{i}]"
        if not isinstance(t, dict):
            c.problems.append(f"{p}: expected a table, got {t!r}")
            continue
        name = c.get(t, "name", p, str, None, _name_problem, required=True)
        if name is not None:
            if name in seen:
                c.problems.append(f"{p}.name: duplicate {what} name {name!r}")
            seen.add(name)
        yield p, t, name


def _parse_destinations(c: _Checker, raw: Any, node: NodeConfig) -> tuple[Destination, ...]:
    result: list[Destination] = []
    for p, t, name in _named_tables(c, raw, "destinations", "destination"):
        # an invalid type gets no type-specific checks: they would only add spurious problems
        kind = c.get(t, "type", p, str, None if "type" in t else "dicom",
                     lambda v: None if v in DESTINATION_TYPES
                     else "expected dicom, folder or dicomweb")
        if kind == "folder":
            c.known_keys(t, p, ("name", "type", "path"))
            folder = c.get(t, "path", p, str, None, _non_empty, required=True)
            if name is not None and folder is not None:
                result.append(Destination(name=name, type="folder", path=Path(folder)))
        elif kind == "dicomweb":
            c.known_keys(t, p, ("name", "type", "url", "auth_file"))
            url = c.get(t, "url", p, str, None, _url_problem, required=True)
            auth = c.get(t, "auth_file", p, str, None, _non_empty)
            if name is not None and url is not None:
                result.append(Destination(name=name, type="dicomweb", url=url.rstrip("/"),
                                          auth_file=Path(auth) if auth else None))
        elif kind == "dicom":
            c.known_keys(t, p, ("name", "type", "ae_title", "host", "port", "calling_ae_title",
                                "tls"))
            ae = c.ae_title(t, "ae_title", p, None, required=True)
            host = c.get(t, "host", p, str, None, _non_empty, required=True)
            port = c.port(t, "port", p, None, required=True)
            calling = c.ae_title(t, "calling_ae_title", p, node.ae_title)
            tls = _parse_client_tls(c, c.table(t, "tls", p), f"{p}.tls") if "tls" in t else None
            if None not in (name, ae, host, port):
                result.append(Destination(name, "dicom", ae, host, port, calling, tls=tls))
        else:
            c.known_keys(t, p, ("name", "type", "path", "ae_title", "host", "port",
                                "calling_ae_title", "tls", "url", "auth_file"))
    return tuple(result)


def _declared_names(raw: Any) -> set[str]:
    """Every destination name written in the file, valid destination or not, so a rule naming
    one with its own problems is not also told that it "is not defined"."""
    if not isinstance(raw, list):
        return set()
    return {t["name"] for t in raw if isinstance(t, dict) and isinstance(t.get("name"), str)}


def _parse_rules(
    c: _Checker,
    raw: Any,
    destination_names: set[str],
    model_names: Collection[str] | None,
) -> tuple[Rule, ...]:
    result: list[Rule] = []
    for p, t, name in _named_tables(c, raw, "rules", "rule"):
        c.known_keys(t, p, ("name", "match", "model", "destinations", "series_description_suffix",
                            "outputs"))
        model = c.get(t, "model", p, str, None, _non_empty, required=True)
        if model is not None and model_names is not None and model not in model_names:
            c.problems.append(
                f"{p}.model: no model {model!r} in the model zoo{_suggest(model, model_names)}"
            )
        conditions = _parse_match(c, t.get("match", {}), f"{p}.match")
        targets = c.get(t, "destinations", p, list, None, required=True) or []
        if isinstance(t.get("destinations"), list) and not targets:
            c.problems.append(f"{p}.destinations: name at least one destination")
        for j, target in enumerate(targets):
            if not isinstance(target, str):
                c.problems.append(f"{p}.destinations[{j}]: expected a string, got {target!r}")
            elif target not in destination_names:
                c.problems.append(
                    f"{p}.destinations[{j}]: no destination named {target!r} is defined"
                    f"{_suggest(target, destination_names)}"
                )
        suffix = c.get(t, "series_description_suffix", p, str,
                       f" [dicomnode {model}]" if model else "")
        outputs = _parse_outputs(c, t.get("outputs", ["enhanced"]), f"{p}.outputs")
        if None not in (name, model, suffix, outputs) and targets:
            result.append(Rule(name, model, tuple(targets), suffix, conditions, outputs))
    return tuple(result)


OUTPUTS = ("enhanced", "difference")


def _parse_outputs(c: _Checker, raw: Any, p: str) -> tuple[str, ...] | None:
    """The series a rule writes: "enhanced" always (a difference needs its derived series)."""
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        c.problems.append(f"{p}: expected a list of strings such as [\"enhanced\", "
                          f"\"difference\"], got {_show(raw)}")
        return None
    unknown = [v for v in raw if v not in OUTPUTS]
    if unknown:
        c.problems.append(f"{p}: unknown output {unknown[0]!r}{_suggest(unknown[0], OUTPUTS)}"
                          f" (known: {', '.join(OUTPUTS)})")
        return None
    if "enhanced" not in raw:
        c.problems.append(f"{p}: must include \"enhanced\" (the difference is written beside "
                          f"the enhanced series, never instead of it), got {_show(raw)}")
        return None
    return tuple(dict.fromkeys(raw))


def _parse_match(c: _Checker, raw: Any, p: str) -> tuple[MatchCondition, ...]:
    if not isinstance(raw, dict):
        c.problems.append(f"{p}: expected a table of DICOM keyword = value, got {raw!r}")
        return ()
    conditions: list[MatchCondition] = []
    for keyword, expected in raw.items():
        kp = f"{p}.{keyword}"
        if tag_for_keyword(keyword) is None:
            c.problems.append(
                f"{kp}: {keyword!r} is not a DICOM keyword{_suggest_keyword(keyword)}"
            )
            continue
        if not isinstance(expected, str | int | float) or isinstance(expected, bool):
            c.problems.append(
                f"{kp}: expected a string, number or \"re:PATTERN\", got {expected!r}"
            )
            continue
        text = str(expected)
        pattern = None
        if text.startswith(REGEX_PREFIX):
            try:
                pattern = re.compile(text[len(REGEX_PREFIX):])
            except re.error as exc:
                c.problems.append(f"{kp}: invalid regular expression {text!r}: {exc}")
                continue
        conditions.append(MatchCondition(keyword, text, pattern))
    return tuple(conditions)


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _url_problem(value: str) -> str | None:
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        return "expected an http:// or https:// URL of the DICOMweb service root"
    return None


def _name_problem(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        return "expected 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
    return None


def _ae_title_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "expected an AE title string"
    if not value.strip():
        return "an AE title must not be empty"
    if len(value) > 16:
        return f"an AE title has at most 16 characters, this has {len(value)}"
    if any(ch == "\\" or not (32 <= ord(ch) < 127) for ch in value):
        return "an AE title holds printable ASCII only, without backslash"
    return None


def _suggest(value: str, options: Collection[str]) -> str:
    close = difflib.get_close_matches(value, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _suggest_keyword(keyword: str) -> str:
    from pydicom.datadict import keyword_dict

    close = difflib.get_close_matches(keyword, list(keyword_dict), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


_MISSING = object()


class _Checker:
    """Collects problems with key paths while reading values with their defaults."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def check(self, ok: bool, path: str, problem: str | None, value: object) -> bool:
        if not ok:
            self.problems.append(f"{path}: {problem}, got {_show(value)}")
        return ok

    def known_keys(self, t: Mapping[str, Any], path: str, allowed: Collection[str]) -> None:
        for key in t:
            if key not in allowed:
                where = f"{path}.{key}" if path else key
                self.problems.append(f"{where}: unknown key{_suggest(key, allowed)}")

    def table(self, t: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = t.get(key, {})
        if not isinstance(value, dict):
            where = f"{path}.{key}" if path else key
            self.problems.append(f"{where}: expected a table [{where}], got {_show(value)}")
            return {}
        return value

    def get(
        self,
        t: Mapping[str, Any],
        key: str,
        path: str,
        kind: type,
        default: Any,
        validate: Callable[[Any], str | None] | None = None,
        required: bool = False,
    ) -> Any:
        where = f"{path}.{key}"
        value = t.get(key, _MISSING)
        if value is _MISSING:
            if required:
                self.problems.append(f"{where}: required key is missing")
            return default
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            self.problems.append(f"{where}: expected {_kind_name(kind)}, got {_show(value)}")
            return default
        if validate is not None:
            problem = validate(value)
            if problem is not None:
                self.problems.append(f"{where}: {problem}, got {_show(value)}")
                return default
        return value

    def integer(self, t: Mapping[str, Any], key: str, path: str, default: Any,
                low: int, high: int, required: bool = False) -> Any:
        return self._ranged(t, key, path, default, low, high, required, integer=True)

    def number(self, t: Mapping[str, Any], key: str, path: str, default: Any,
               low: float, high: float) -> Any:
        value = self._ranged(t, key, path, default, low, high, False, integer=False)
        return float(value) if value is not None else None

    def port(self, t: Mapping[str, Any], key: str, path: str, default: Any,
             required: bool = False) -> Any:
        return self.integer(t, key, path, default, 1, 65535, required)

    def ae_title(self, t: Mapping[str, Any], key: str, path: str, default: Any,
                 required: bool = False) -> Any:
        value = self.get(t, key, path, str, default, _ae_title_problem, required)
        return value.strip() if isinstance(value, str) else value

    def _ranged(self, t: Mapping[str, Any], key: str, path: str, default: Any,
                low: float, high: float, required: bool, integer: bool) -> Any:
        where = f"{path}.{key}"
        value = t.get(key, _MISSING)
        if value is _MISSING:
            if required:
                self.problems.append(f"{where}: required key is missing")
            return default
        kinds: tuple[type, ...] = (int,) if integer else (int, float)
        noun = "an integer" if integer else "a number"
        if not isinstance(value, kinds) or isinstance(value, bool) or not low <= value <= high:
            self.problems.append(
                f"{where}: expected {noun} {_bound(low)}-{_bound(high)}, got {_show(value)}"
            )
            return default
        return value


def _bound(value: float) -> str:
    """A range bound as written by a person: 1000000000, not 1e+09."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _kind_name(kind: type) -> str:
    return {str: "a string", list: "an array", dict: "a table", bool: "true or false"}.get(
        kind, kind.__name__
    )


def _show(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    return repr(value)
