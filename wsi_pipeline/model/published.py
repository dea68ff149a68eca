"""Published PCam classifiers known by name: one table of records, with facts from their publishers' sources.

No weights here: ``sources.resolve_hub_model`` downloads them from the Hugging Face Hub on first use."""

from __future__ import annotations

from dataclasses import dataclass, field

TIATOOLBOX_REPO = "TIACentre/TIAToolbox_pretrained_weights"
TIATOOLBOX_SOURCE = "https://github.com/TissueImageAnalytics/tiatoolbox"
TIATOOLBOX_COMMIT = "6fc8a2ec4fc6076d4c573568fa23c79dba1b0471"  # the TIAToolbox source these facts are from
TIATOOLBOX_CITATION = (
    "Pocock J, Graham S, Vu QD, et al. TIAToolbox as an end-to-end library for advanced tissue image "
    "analytics. Communications Medicine (2022). doi:10.1038/s43856-022-00186-5"
)
PCAM_CITATION = (
    "Veeling BS, Linmans J, Winkens J, Cohen T, Welling M. Rotation equivariant CNNs for digital pathology. "
    "MICCAI 2018"
)
PCAM_DATA = "PCam (Camelyon16 lymph nodes)"
PCAM_CLASSES = ("normal", "tumour")  # PCam's labels: 1 = metastatic tissue in the patch's centre 32 × 32 px
PCAM_RESEARCH_USE = (
    "Research: patch-level detection of breast-cancer metastases in H&E lymph-node sections, at the "
    "resolution it was trained at. Not a medical device; not for diagnosis."
)
# F1 on PCam as TIAToolbox publishes it (the PatchPredictor docstring's table), by backbone
TIATOOLBOX_PCAM_F1 = {
    "alexnet": 0.840,
    "resnet18": 0.888,
    "resnet34": 0.889,
    "resnet50": 0.892,
    "resnet101": 0.888,
    "resnext50_32x4d": 0.900,
    "resnext101_32x8d": 0.892,
    "wide_resnet50_2": 0.901,
    "wide_resnet101_2": 0.898,
    "densenet121": 0.897,
    "densenet161": 0.893,
    "densenet169": 0.895,
    "densenet201": 0.891,
    "mobilenet_v2": 0.899,
    "mobilenet_v3_large": 0.895,
    "mobilenet_v3_small": 0.890,
    "googlenet": 0.867,
}
TIATOOLBOX_F1_SOURCE = (
    "TIAToolbox, 'PatchPredictor performance on the PCam dataset' "
    f"(tiatoolbox/models/engine/patch_predictor.py at {TIATOOLBOX_COMMIT[:12]})"
)


@dataclass(frozen=True)
class PublishedModel:
    """A published model: where its files are and what its publisher says about it. For ``hf-hub`` models
    the repo's ``config.json`` describes the network and its input; the table adds what it leaves out."""

    spec: str  # what --model takes
    repo: str  # Hugging Face Hub repo
    architecture: str  # as a card names it
    training_data: str
    patch_size: int  # pixels
    mpp: float  # µm/px of the patches it was trained on
    license: str
    citation: str
    homepage: str
    weights: str = ""  # file in the repo ("" when the repo's config names it)
    architecture_args: dict = field(default_factory=dict)
    class_names: tuple[str, ...] = PCAM_CLASSES
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # RGB scaled to [0, 1], then (x - mean) / std
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    intended_use: str = PCAM_RESEARCH_USE
    metrics: dict = field(default_factory=dict)  # published figures, each with its "source"

    @property
    def name(self) -> str:
        """The spec without its ``tiatoolbox:``/``hf-hub:`` prefix."""
        return self.spec.partition(":")[2]


PUBLISHED: tuple[PublishedModel, ...] = (
    *(
        PublishedModel(
            spec=f"tiatoolbox:{backbone}-pcam",
            repo=TIATOOLBOX_REPO,
            weights=f"{backbone}-pcam.pth",
            architecture="tiatoolbox_cnn",
            architecture_args={"backbone": backbone},
            training_data=PCAM_DATA,
            patch_size=96,
            mpp=1.0,  # TIAToolbox's input resolution for its PCam models (PCam itself: ~0.97 µm/px)
            license="CC0-1.0",
            citation=f"{TIATOOLBOX_CITATION}; data: {PCAM_CITATION}",
            homepage=TIATOOLBOX_SOURCE,
            metrics={"pcam_f1": f1, "source": TIATOOLBOX_F1_SOURCE},
        )
        for backbone, f1 in TIATOOLBOX_PCAM_F1.items()
    ),
    PublishedModel(
        spec="hf-hub:1aurent/resnet18.tiatoolbox-pcam",
        repo="1aurent/resnet18.tiatoolbox-pcam",
        architecture="timm:resnet18",
        training_data=PCAM_DATA,
        patch_size=96,
        mpp=1.0,  # as TIAToolbox's resnet18-pcam; the repo's config.json states no resolution
        license="CC0-1.0",
        citation=f"{TIATOOLBOX_CITATION}; data: {PCAM_CITATION}",
        homepage="https://huggingface.co/1aurent/resnet18.tiatoolbox-pcam",
    ),
)


def published_model(spec: str) -> PublishedModel | None:
    """The table's record of ``spec`` (without a revision), if any."""
    return next((model for model in PUBLISHED if model.spec == spec), None)
