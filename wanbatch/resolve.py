"""A validated prompt file (contract 1) -> the fully resolved run spec (contract 4)."""

from __future__ import annotations

from wanbatch.prompts import BUILTIN_DEFAULTS, PromptFile
from wanbatch.spec import ModelRef, RunSpec, Source, SpecItem, derive_seed, parse_size


def resolve_model(prompt_file: PromptFile, *, default: ModelRef) -> ModelRef:
    """The file's model, else the deployment's; a file naming the deployment's model inherits its revision."""
    choice = prompt_file.model
    if choice is None:
        return default
    if choice.revision is not None:
        return ModelRef(id=choice.id, revision=choice.revision)
    return ModelRef(id=choice.id, revision=default.revision if choice.id == default.id else "main")


def resolve_items(prompt_file: PromptFile, *, run_id: str) -> list[SpecItem]:
    """Item over file defaults over the model card's defaults; missing seeds derived from run and item id."""
    file_defaults = prompt_file.defaults.model_dump(exclude_none=True)
    items = []
    for item, item_id in zip(prompt_file.prompts, prompt_file.item_ids, strict=True):
        own = item.model_dump(exclude_none=True, exclude={"id", "prompt"})
        merged = {**BUILTIN_DEFAULTS, **file_defaults, **own}
        width, height = parse_size(merged.pop("size"))
        seed = merged.pop("seed", None)
        items.append(
            SpecItem(
                id=item_id,
                prompt=item.prompt,
                seed=derive_seed(run_id, item_id) if seed is None else seed,
                width=width,
                height=height,
                **merged,
            )
        )
    return items


def resolve_run(
    prompt_file: PromptFile,
    *,
    run_id: str,
    source: Source,
    default_model: ModelRef,
    items_per_job: int = 1,
) -> RunSpec:
    return RunSpec(
        run_id=run_id,
        source=source,
        model=resolve_model(prompt_file, default=default_model),
        gpus=prompt_file.gpus,
        items_per_job=items_per_job,
        items=resolve_items(prompt_file, run_id=run_id),
    )
