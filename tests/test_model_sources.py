"""Models named by where they are published (``tiatoolbox:NAME``, ``hf-hub:ORG/REPO``), fetched through
``huggingface_hub`` from a loopback HTTP server standing in for the Hugging Face Hub.

Each publisher's network is built as its publisher describes it, saved with random weights in the publisher's
file format and served; our code loads it by name and must give the publisher's probabilities on real patches
of CMU-1-Small-Region, with the publisher's input scaling."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import timm
import torch
import torchvision
from huggingface_hub import constants
from safetensors.torch import save as safetensors_bytes
from torch import nn

from wsi_pipeline import InputError, Model, Slide, read_card
from wsi_pipeline.cli import models as models_cli
from wsi_pipeline.model.bundled import resolve_model_folder
from wsi_pipeline.model.published import PUBLISHED, TIATOOLBOX_REPO
from wsi_pipeline.model.sources import ModelSourceInfo

from .conftest import CMU_SLIDE, REPO

CPU = torch.device("cpu")
RESNET18 = "tiatoolbox:resnet18-pcam"
MEAN, STD = (0.70, 0.55, 0.68), (0.15, 0.18, 0.12)  # a histology normalisation


class FakeHub:
    """Model repos served as the hub serves their files: HEAD and GET on
    ``/<org>/<repo>/resolve/<revision>/<file>`` answer with the repo's commit (``X-Repo-Commit``), an
    ``ETag`` and a ``Content-Length``; a 404 says what is missing in ``X-Error-Code``."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                hub.answer(self, with_body=False)

            def do_GET(self) -> None:
                hub.answer(self, with_body=True)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def publish(self, repo: str, files: dict[str, bytes]) -> None:
        self.repos.setdefault(repo, {}).update(files)

    def answer(self, request: BaseHTTPRequestHandler, with_body: bool) -> None:
        self.requests.append(f"{request.command} {request.path}")
        org, name, verb, revision, filename = [
            *unquote(urlsplit(request.path).path)[1:].split("/", 4),
            *[""] * 5,
        ][:5]
        repo, data, error = f"{org}/{name}", b"", None
        files = self.repos.get(repo)
        if files is None or verb != "resolve":
            error = "RepoNotFound"
        elif revision not in ("main", self.commit(repo)):
            error = "RevisionNotFound"
        elif filename not in files:
            error = "EntryNotFound"
        else:
            data = files[filename]
        request.send_response(404 if error else 200)
        request.send_header("X-Repo-Commit", self.commit(repo))
        if error:
            request.send_header("X-Error-Code", error)
        else:
            request.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if with_body:
            request.wfile.write(data)


@pytest.fixture(scope="module")
def hub():
    fake = FakeHub()
    yield fake
    fake.server.shutdown()


def hub_environment(hub: FakeHub, home: Path, offline: bool = False) -> dict[str, str]:
    """The environment a hub user sets: the endpoint, the cache's home, offline mode."""
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }


@pytest.fixture
def use_hub(hub, tmp_path, monkeypatch):
    """``use_hub(home, offline)`` points huggingface_hub at the fake hub with its cache in ``home``: sets the
    environment and re-reads it as the library does when imported. Starts with ``tmp_path / "hf"``."""

    def use(home: Path, offline: bool = False) -> Path:
        for name in (
            "HF_HUB_CACHE",
            "HF_ASSETS_CACHE",
            "HUGGINGFACE_HUB_CACHE",
            "HF_TOKEN",
            "TRANSFORMERS_OFFLINE",
        ):
            monkeypatch.delenv(name, raising=False)
        for name, value in hub_environment(hub, home, offline).items():
            monkeypatch.setenv(name, value)
        importlib.reload(constants)
        return home

    use(tmp_path / "hf")
    yield use
    monkeypatch.undo()
    importlib.reload(constants)


def real_patches(mpp: float, side: int, count: int = 8) -> np.ndarray:
    """``count`` patches of ``side`` px at ``mpp`` µm/px from CMU-1-Small-Region, in a row across tissue."""
    with Slide(CMU_SLIDE) as slide:
        strip = slide.read_at_mpp(120, 300, side * count, side, mpp)
    return strip.reshape(side, count, side, 3).swapaxes(0, 1).copy()


def tensor(patches: np.ndarray, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """The publishers' input: RGB scaled to [0, 1] (torchvision's ToTensor), then normalised."""
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def reference(network: nn.Module, x: torch.Tensor, softmax: bool) -> np.ndarray:
    with torch.no_grad():
        out = network.eval()(x)
    return (torch.softmax(out, dim=1) if softmax else out).numpy()


class TiatoolboxNetwork(nn.Module):
    """TIAToolbox's ``vanilla.CNNModel`` as its source describes it: a torchvision backbone minus its pooling
    and classifier (``feat_extract``), global average pooling (``pool``), a linear layer sized by a forward
    pass (``classifier``), and a softmax at the end of forward."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        if backbone == "googlenet":
            whole = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
            self.feat_extract = nn.Sequential(*list(whole.children())[:-3])
        elif backbone.startswith("resnet"):
            self.feat_extract = nn.Sequential(*list(getattr(torchvision.models, backbone)().children())[:-2])
        else:
            self.feat_extract = getattr(torchvision.models, backbone)().features
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(self.feat_extract(torch.rand([2, 3, 96, 96])).shape[1], 2)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(torch.flatten(self.pool(self.feat_extract(imgs)), 1)), -1)


def publish_tiatoolbox(hub: FakeHub, backbone: str) -> tuple[nn.Module, bytes]:
    """TIAToolbox's network for ``backbone`` with random weights, served as ``<backbone>-pcam.pth`` (a
    torch.save'd state dict)."""
    torch.manual_seed(0)
    network = TiatoolboxNetwork(backbone)  # its sizing forward pass moved the batch-norm statistics too
    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    hub.publish(TIATOOLBOX_REPO, {f"{backbone}-pcam.pth": buffer.getvalue()})
    return network, buffer.getvalue()


def timm_network(architecture: str, classes: int) -> nn.Module:
    """A timm network with random weights and batch-norm statistics moved off their defaults."""
    torch.manual_seed(0)
    network = timm.create_model(architecture, num_classes=classes)
    with torch.no_grad():
        network.train()(torch.rand(4, 3, 96, 96))
    return network


def timm_config(architecture: str, classes: int, side: int, mean, std, **extra) -> bytes:
    """A timm-format ``config.json`` (as ``timm.models.push_to_hf_hub`` writes it)."""
    pretrained = {"input_size": [3, side, side], "mean": list(mean), "std": list(std), "num_classes": classes}
    config = {"architecture": architecture, "num_classes": classes, "pretrained_cfg": pretrained}
    for key, value in extra.items():
        (pretrained if key == "mpp" else config)[key] = value
    return json.dumps(config).encode()


def readme(license_id: str) -> bytes:
    return f"---\nlicense: {license_id}\nlibrary_name: timm\n---\n# A model\n".encode()


@pytest.mark.parametrize("backbone", ["resnet18", "densenet121", "mobilenet_v3_small", "googlenet"])
def test_tiatoolbox_models_load_by_name_and_give_its_probabilities(hub, use_hub, one_torch_thread, backbone):
    network, _ = publish_tiatoolbox(hub, backbone)
    model = Model(f"tiatoolbox:{backbone}-pcam", CPU)
    assert list(model.module.state_dict()) == list(network.state_dict())  # the published keys, as they are
    card = model.card
    assert (card.architecture, card.architecture_args) == ("tiatoolbox_cnn", {"backbone": backbone})
    assert (card.patch_size, card.mpp, card.class_names, card.output) == (
        96,
        1.0,
        ["normal", "tumour"],
        "softmax",
    )
    patches = real_patches(1.0, 96)
    np.testing.assert_allclose(model.predict(patches), reference(network, tensor(patches), False), atol=1e-5)


def test_a_tiatoolbox_card_records_where_the_weights_came_from(hub, use_hub, tmp_path):
    _, weights = publish_tiatoolbox(hub, "resnet18")
    folder = resolve_model_folder(RESNET18)
    card = read_card(folder)
    commit = hub.commit(TIATOOLBOX_REPO)
    sha256 = hashlib.sha256(weights).hexdigest()
    expected = ModelSourceInfo(RESNET18, TIATOOLBOX_REPO, commit, ("resnet18-pcam.pth",), sha256)
    assert ModelSourceInfo.from_card(card) == expected
    assert ModelSourceInfo.from_card(read_card(REPO / "models" / "synthetic-pcam-cnn")) is None
    assert card.license == "CC0-1.0" and "TIAToolbox as an end-to-end library" in card.source["citation"]
    assert "not for diagnosis" in card.intended_use.lower()
    assert (
        card.metrics["published"]["pcam_f1"] == 0.888
        and "patch_predictor.py" in card.metrics["published"]["source"]
    )
    # the folder lives in the hub's assets cache; its weights are a link into the hub's cache
    assert folder.is_relative_to(tmp_path / "hf" / "assets" / "wsi_pipeline") and folder.name == commit
    assert (folder / card.weights).is_symlink() and (folder / card.weights).read_bytes() == weights
    hub.requests.clear()
    assert (
        resolve_model_folder(RESNET18) == folder
    )  # found again (the hub asked only whether the file changed)
    assert all(request.startswith("HEAD ") for request in hub.requests)


def test_offline_the_cache_serves_and_without_it_one_line_says_how_to_get_it(hub, use_hub, tmp_path):
    publish_tiatoolbox(hub, "resnet18")
    patches = real_patches(1.0, 96, count=4)
    online = Model(RESNET18, CPU).predict(patches)
    shutil.rmtree(tmp_path / "hf" / "assets")  # our card folder is made again from the hub's cache
    use_hub(tmp_path / "hf", offline=True)
    hub.requests.clear()
    offline = Model(RESNET18, CPU)
    assert hub.requests == []
    np.testing.assert_allclose(offline.predict(patches), online, atol=1e-6)
    assert offline.card.source["revision"] == hub.commit(TIATOOLBOX_REPO)

    use_hub(tmp_path / "empty", offline=True)
    with pytest.raises(InputError) as error:
        Model(RESNET18, CPU)
    message = str(error.value)
    assert "\n" not in message and message.startswith(
        f"{RESNET18}: resnet18-pcam.pth of {TIATOOLBOX_REPO} is"
    )
    for part in (
        "not in the Hugging Face cache",
        "HF_HUB_OFFLINE=1",
        f"wsi-models pull {RESNET18}",
        "$HF_HOME",
    ):
        assert part in message
    assert hub.requests == []


def test_timm_repos_load_with_their_config(hub, use_hub, one_torch_thread):
    # a known repo (TIAToolbox's resnet18-pcam in timm's format): its config states no µm/px, the table does
    network = timm_network("resnet18", 2)
    files = {
        "config.json": timm_config("resnet18", 2, 96, (0, 0, 0), (1, 1, 1)),
        "model.safetensors": safetensors_bytes(network.state_dict()),
        "README.md": readme("cc0-1.0"),
    }
    hub.publish("1aurent/resnet18.tiatoolbox-pcam", files)
    model = Model("hf-hub:1aurent/resnet18.tiatoolbox-pcam", CPU)
    card = model.card
    assert (card.architecture, card.patch_size, card.mpp, card.class_names) == (
        "timm:resnet18",
        96,
        1.0,
        ["normal", "tumour"],
    )
    assert card.source["mpp_from"] == "wsi_pipeline's table of published models" and card.license == "CC0-1.0"
    patches = real_patches(1.0, 96)
    np.testing.assert_allclose(model.predict(patches), reference(network, tensor(patches), True), atol=1e-5)

    # another lab's repo: its own classes, normalisation and µm/px, PyTorch weights only, pinned to a commit
    network = timm_network("mobilenetv3_small_050", 3)
    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    names = ["stroma", "lymphocytes", "tumour"]
    files = {
        "config.json": timm_config("mobilenetv3_small_050", 3, 64, MEAN, STD, label_names=names, mpp=0.5),
        "pytorch_model.bin": buffer.getvalue(),
        "README.md": readme("apache-2.0"),
    }
    hub.publish("lab/node-tissue", files)
    commit = hub.commit("lab/node-tissue")
    model = Model(f"hf-hub:lab/node-tissue@{commit}", CPU)
    card = model.card
    assert (card.name, card.patch_size, card.mpp, card.class_names, card.weights) == (
        "hf-hub:lab/node-tissue",
        64,
        0.5,
        names,
        "pytorch_model.bin",
    )
    assert (card.license, card.source["revision"], card.source["files"]) == (
        "apache-2.0",
        commit,
        ["README.md", "config.json", "pytorch_model.bin"],
    )
    patches = real_patches(0.5, 64)
    expected = reference(network, tensor(patches, MEAN, STD), True)
    np.testing.assert_allclose(model.predict(patches), expected, atol=1e-5)


def test_wsinfer_repos_load_as_the_wsinfer_adapter_reads_them(hub, use_hub, one_torch_thread):
    network = timm_network("resnet10t", 2)
    config = {
        "spec_version": "1.0",
        "architecture": "resnet10t",
        "num_classes": 2,
        "class_names": ["other", "tumor"],
        "patch_size_pixels": 96,
        "spacing_um_px": 0.5,
        "transform": [{"name": "ToTensor"}, {"name": "Normalize", "arguments": {"mean": MEAN, "std": STD}}],
    }
    files = {
        "config.json": json.dumps(config).encode(),
        "model.safetensors": safetensors_bytes(network.state_dict()),
    }
    hub.publish("zoo/lymph-node-resnet10t", files)
    model = Model("hf-hub:zoo/lymph-node-resnet10t", CPU)
    card = model.card
    assert (card.mpp, card.class_names, card.weights, card.source["mpp_from"]) == (
        0.5,
        ["other", "tumor"],
        "model.safetensors",
        "config.json (spacing_um_px)",
    )
    assert card.training["wsinfer_config"] == json.loads(files["config.json"])
    patches = real_patches(0.5, 96)
    expected = reference(network, tensor(patches, MEAN, STD), True)
    np.testing.assert_allclose(model.predict(patches), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("tiatoolbox:resnet18-kather100k", "not a TIAToolbox PCam model (one of alexnet-pcam, resnet18-pcam"),
        ("hf-hub:no-org", "a hub model is named hf-hub:ORG/REPO"),
        ("hf-hub:lab/absent", "no repository lab/absent on http://127.0.0.1"),
        ("hf-hub:lab/no-spacing@v9", "lab/no-spacing has no revision 'v9'"),
        ("hf-hub:lab/no-weights", "lab/no-weights has no model.safetensors or pytorch_model.bin (revision "),
        ("hf-hub:lab/transformers", "config.json of lab/transformers is neither timm's"),
        ("hf-hub:lab/no-spacing", "does not state the µm/px its patches were cut at"),
        ("no-such-model", "model not found (neither a folder, a bundled model's name, tiatoolbox:NAME"),
    ],
)
def test_unusable_specs_are_refused_in_one_line(hub, use_hub, spec, problem):
    config = timm_config("resnet18", 2, 96, MEAN, STD)
    hub.publish("lab/no-spacing", {"config.json": config, "model.safetensors": b"never read"})
    hub.publish("lab/no-weights", {"config.json": config})
    hub.publish("lab/transformers", {"config.json": b'{"architectures": ["ViTForImageClassification"]}'})
    with pytest.raises(InputError, match=re.escape(problem)) as error:
        resolve_model_folder(spec)
    assert error.value.path == spec and "\n" not in str(error.value)


def test_wsi_models_list_pull_and_info(hub, use_hub, tmp_path, capsys):
    _, weights = publish_tiatoolbox(hub, "resnet18")
    assert models_cli.main(["list"]) == 0
    listing = capsys.readouterr().out
    assert all(model.spec in listing for model in PUBLISHED) and len(PUBLISHED) == 18
    assert "synthetic-pcam-cnn" in listing and "Demonstration and pipeline checks only" in listing
    assert (
        "pcam_f1 0.888 [1]" in listing
        and "[1] TIAToolbox, 'PatchPredictor performance on the PCam" in listing
    )

    out = tmp_path / "resnet18-pcam"
    assert models_cli.main(["pull", RESNET18, "--out", str(out)]) == 0
    weights_file = out / "resnet18-pcam.pth"
    assert not weights_file.is_symlink() and weights_file.read_bytes() == weights  # an ordinary folder
    card = read_card(out)
    assert (card.source["repo"], card.source["revision"]) == (TIATOOLBOX_REPO, hub.commit(TIATOOLBOX_REPO))
    assert card.source["sha256"] == hashlib.sha256(weights).hexdigest() and card.license == "CC0-1.0"
    capsys.readouterr()
    assert models_cli.main(["info", str(out)]) == 0
    described = {
        key: value
        for key, _, value in (line.partition("  ") for line in capsys.readouterr().out.splitlines())
    }
    assert described["source"].strip() == f"{TIATOOLBOX_REPO} at {hub.commit(TIATOOLBOX_REPO)}"
    assert described["licence"].strip() == "CC0-1.0" and "TIAToolbox" in described["citation"]

    # a repo that does not state its µm/px: pulled with the spacing its publisher documents elsewhere
    hub.publish(
        "lab/no-spacing",
        {"config.json": timm_config("resnet18", 2, 96, MEAN, STD), "model.safetensors": b"x"},
    )
    assert (
        models_cli.main(["pull", "hf-hub:lab/no-spacing", "--mpp", "0.5", "--out", str(tmp_path / "m")]) == 0
    )
    card = read_card(tmp_path / "m")
    assert (card.mpp, card.source["mpp_from"]) == (0.5, "given when pulled (--mpp)")
    assert models_cli.main(["pull", "hf-hub:lab/no-spacing", "--mpp", "0.5"]) == 2
    assert "needs --out" in capsys.readouterr().err
    assert models_cli.main(["pull", RESNET18, "--mpp", "0.5", "--out", str(tmp_path / "n")]) == 2
    assert "--mpp 0.5 contradicts the 1.0 µm/px of wsi_pipeline's table" in capsys.readouterr().err


def wsi_models(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    code = "import sys; from wsi_pipeline.cli.models import main; sys.exit(main(sys.argv[1:]))"
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=environment, capture_output=True, text=True, timeout=300
    )


def test_wsi_models_honours_the_hub_environment(hub, tmp_path):
    """Environment variables as users set them, in fresh processes: a pull through HF_ENDPOINT into HF_HOME,
    then offline from that cache; offline without it, one line and no traceback. --help loads no torch."""
    _, weights = publish_tiatoolbox(hub, "resnet18")
    home = tmp_path / "hf"
    pulled = wsi_models("pull", RESNET18, env=hub_environment(hub, home))
    assert pulled.returncode == 0, pulled.stderr
    assert str(home / "assets" / "wsi_pipeline") in pulled.stdout
    blobs = list((home / "hub").glob("models--TIACentre--TIAToolbox_pretrained_weights/blobs/*"))
    assert [blob.read_bytes() for blob in blobs] == [weights]

    info = wsi_models("info", RESNET18, env=hub_environment(hub, home, offline=True))
    assert info.returncode == 0, info.stderr
    assert hashlib.sha256(weights).hexdigest() in info.stdout

    failed = wsi_models("pull", RESNET18, env=hub_environment(hub, tmp_path / "empty", offline=True))
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr.count("\n") == 1 and failed.stderr.startswith(f"wsi-models: error: {RESNET18}: ")
    assert "wsi-models pull tiatoolbox:resnet18-pcam" in failed.stderr

    code = (
        "import sys; from wsi_pipeline.cli.models import main\ntry: main(['--help'])\nexcept SystemExit: pass"
    )
    code += "\nprint('torch' in sys.modules, 'huggingface_hub' in sys.modules)"
    helped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert helped.stdout.splitlines()[-1] == "False False"
