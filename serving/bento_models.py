"""BentoML model-store wiring for the weights: which models a bento carries, and how they get into the store.

    python -m serving.bento_models import --profile tiny            # build the tiny weights into the store (offline)
    python -m serving.bento_models import --profile sdxl --from DIR # import pre-downloaded sdxl folders (offline bento)

DIR holds one folder per model repository in its hub layout (the same layout as PICTUREBOOK_MODEL_DIR).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import bentoml

from pipeline.config import ModelSettings, Profile
from pipeline.loading import ModelPaths
from pipeline.sources import MODEL_REPOS

STORE_NAMES = {Profile.tiny: "picturebook-tiny", Profile.sdxl: "picturebook-sdxl"}


def import_model_dir(source: Path, profile: Profile) -> bentoml.Model:
    """Copy a folder of model repositories into the BentoML model store as one model."""
    missing = [repo.folder for repo in MODEL_REPOS.values() if not (source / repo.folder).is_dir()]
    if missing:
        raise SystemExit(f"{source} lacks model folders: {', '.join(missing)}")
    with bentoml.models.create(
        STORE_NAMES[profile],
        labels={"profile": profile.value},
        metadata={key: {"repo_id": r.repo_id, "revision": r.revision} for key, r in MODEL_REPOS.items()},
    ) as model:
        for repo in MODEL_REPOS.values():
            shutil.copytree(source / repo.folder, Path(model.path) / repo.folder, symlinks=False)
    return model


def ensure_tiny_in_store() -> bentoml.Model:
    """The tiny weights as a stored model, built (seconds, offline) the first time they are asked for."""
    try:
        model = bentoml.models.get(f"{STORE_NAMES[Profile.tiny]}:latest")
        # A model stored before a model folder joined MODEL_REPOS (e.g. the translator) is rebuilt, not served.
        if all((Path(model.path) / repo.folder).is_dir() for repo in MODEL_REPOS.values()):
            return model
    except bentoml.exceptions.NotFound:
        pass
    from pipeline.tiny import build_tiny_models  # torch: only when the store lacks them

    with tempfile.TemporaryDirectory() as scratch:
        return import_model_dir(build_tiny_models(Path(scratch) / "tiny"), Profile.tiny)


def declared_models(settings: ModelSettings, bento_model: str | None) -> dict[str, object]:
    """Class attributes for the model service: the models `bentoml build` packs into the bento."""
    if settings.model_dir is not None:
        return {}  # a local folder, used as is and not packed
    if settings.profile is Profile.tiny:
        return {"stored_models": bentoml.models.BentoModel(ensure_tiny_in_store().tag)}
    if bento_model:
        return {"stored_models": bentoml.models.BentoModel(bento_model)}
    return {
        f"hf_{key}": bentoml.models.HuggingFaceModel(repo.repo_id, revision=repo.revision, include=list(repo.include))
        for key, repo in MODEL_REPOS.items()
    }


def model_paths(service: object, settings: ModelSettings) -> ModelPaths:
    """Local folders of the declared models, resolved at start-up (never at request time)."""
    if settings.model_dir is not None:
        return ModelPaths.under(settings.model_dir)
    if hasattr(service, "stored_models"):
        return ModelPaths.under(Path(service.stored_models.path))
    return ModelPaths(**{key: Path(getattr(service, f"hf_{key}")) for key in MODEL_REPOS})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="put model weights into the BentoML model store")
    imp.add_argument("--profile", choices=[p.value for p in Profile], required=True)
    imp.add_argument("--from", dest="source", type=Path, help="folder of pre-downloaded repositories (sdxl)")
    args = parser.parse_args()
    profile = Profile(args.profile)
    if profile is Profile.tiny and args.source is None:
        model = ensure_tiny_in_store()
    elif args.source is None:
        raise SystemExit("--from DIR is required for sdxl (download with `huggingface-cli download` first)")
    else:
        model = import_model_dir(args.source, profile)
    print(model.tag)


if __name__ == "__main__":
    main()
