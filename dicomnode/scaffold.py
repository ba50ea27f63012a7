"""``dicomnode init DIR``: a commented ``config.toml`` and the storage folders of a new node.

The file it writes is the administrator's starting point: every key of SPEC section 3 with
its default and what it means, paths made absolute (a service's working directory is not the
administrator's shell's), and one working rule into a local outbox so that the node does
something visible before a PACS is configured. ``dicomnode check-config`` accepts it as it is.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from dicomnode.config import parse_config
from dicomnode.errors import DicomNodeError

CONFIG_NAME = "config.toml"


def write_node_dir(directory: Path, ae_title: str = "DICOMNODE", port: int = 11112,
                   http_port: int = 8080, force: bool = False) -> list[Path]:
    """Create ``directory`` with its config and folders; the paths created, config first.

    Raises DicomNodeError when a config is already there (unless ``force``): an administrator's
    edited file is never overwritten by accident; ConfigError (before anything is written)
    when an option makes an invalid config.
    """
    directory = directory.expanduser().resolve()
    config = directory / CONFIG_NAME
    if config.exists() and not force:
        raise DicomNodeError(f"{config} already exists: edit it, or pass --force to replace it")
    storage = directory / "var"
    text = config_text(storage, ae_title, port, http_port)
    parse_config(tomllib.loads(text), source=Path("options"))  # checked before writing
    folders = [storage, storage / "outbox", directory / "secrets"]
    try:
        for folder in (directory, *folders):
            folder.mkdir(parents=True, exist_ok=True)
        (directory / "secrets").chmod(0o700)  # tokens and TLS keys live here
        config.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise DicomNodeError(f"cannot create the node folder {directory}: {exc}") from exc
    return [config, *folders]


def config_text(storage: Path, ae_title: str, port: int, http_port: int) -> str:
    """The commented config for a node whose state lives in ``storage``."""
    return _TEMPLATE.format(storage=storage, outbox=storage / "outbox", ae_title=ae_title,
                            port=port, http_port=http_port,
                            secrets=storage.parent / "secrets")


_TEMPLATE = """\
# dicomnode configuration, written by `dicomnode init`.
# Check it with `dicomnode check-config --config THIS_FILE` after every edit: every problem
# is reported with its key path. Keys left out take the default shown in the comments.

[node]
ae_title = "{ae_title}"          # called AE title: associations to another called AE are rejected
host = "0.0.0.0"                # interface of the DICOM SCP (0.0.0.0: all)
port = {port}                     # DICOM port (above 1023: no root needed)
storage_dir = "{storage}"       # spool, SQLite index, derived objects
allowed_calling_aets = []       # e.g. ["CT1", "MR2", "ROUTER"]; empty accepts any (warned at start)
max_associations = 16
series_idle_seconds = 30        # a series is stable this long after its last instance
min_free_disk_mb = 1024         # below this, C-STORE answers 0xA700 (out of resources)
retention_hours = 72            # originals and sent derived objects are purged after this

# DICOM TLS for the SCP (then it speaks TLS only). Keep the key readable by the node only.
# [node.tls]
# cert = "{secrets}/node.pem"
# key = "{secrets}/node.key"
# ca = "{secrets}/ca.pem"       # when present, client certificates are required

[http]
host = "127.0.0.1"              # status page (/), /healthz, /metrics, /api/series
port = {http_port}
# token_file = "{secrets}/http.token"  # required when host is not loopback: clients send
#                                 # "Authorization: Bearer <token>", browsers sign in once
show_phi = false                # true: the status page shows patient names and IDs

[worker]
device = "auto"                 # auto | cpu | cuda | cuda:N | mps
precision = "auto"              # auto | fp32 | fp16 | bf16
runtime = "auto"                # auto | torch | onnxruntime: auto times both at load (CPU)
batch_size = 8
tile_size = 512                 # larger images are processed in overlapping tiles
workers = 1

# Where the models run. local: worker threads in this node. ray: model replicas on a Ray
# cluster (pip install 'dicomnode[cluster]'; docs/OPERATIONS.md); jobs stay queued while
# no replica answers. address: "auto" (the cluster this machine joined) or "host:port".
[cluster]
engine = "local"               # local | ray
address = "auto"

# Where derived series go. Each destination has its own queue, retries and last error
# (`dicomnode status`). A PACS over DICOM (check it with `dicomnode echo pacs`):
# [[destinations]]
# name = "pacs"
# type = "dicom"
# ae_title = "PACS"
# host = "pacs.example.org"
# port = 104
# calling_ae_title = "{ae_title}"  # default: node.ae_title

# A PACS over DICOMweb (STOW-RS); the token file holds one line, mode 600:
# [[destinations]]
# name = "pacs-web"
# type = "dicomweb"
# url = "https://pacs.example.org/dicom-web"
# auth_file = "{secrets}/pacs-web.token"

# A folder: one sub-folder per derived series.
[[destinations]]
name = "outbox"
type = "folder"
path = "{outbox}"

# Rules: every rule whose `match` holds makes its own derived series (`dicomnode models`
# lists the models). Values match exactly (case-insensitive) or as "re:REGEX".
[[rules]]
name = "mr-superres"
match = {{ Modality = "MR" }}
model = "mr-sr-x2"              # learned x2 super-resolution; "bicubic-x2" is the classical one
destinations = ["outbox"]
series_description_suffix = " [dicomnode SRx2]"

# [[rules]]
# name = "ct-denoise"
# match = {{ Modality = "CT" }}
# model = "ct-denoise"
# destinations = ["outbox"]
# series_description_suffix = " [dicomnode DN]"
"""
