"""Which config model sits at an error's location, so a message can say what would have been valid.

pydantic reports an unknown key as `extra_forbidden` at a location such as
`('workloads', 'training', 0, 'dataset', 'synthetic', 'num_sample')`, but not which keys the
model there knows. Walking the annotations from the top model along that location answers it,
and so "did you mean 'num_samples'?" can be computed rather than guessed from a global word list.
A discriminated union's tag appears in the location (`'synthetic'` above); it picks the member.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Tag

TAG_KEYS = ("kind", "process", "name")
"""The keys cotrain's unions are told apart by."""


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """(annotation without Annotated, its metadata)."""
    metadata: list[Any] = []
    while typing.get_origin(annotation) is typing.Annotated:
        args = typing.get_args(annotation)
        annotation, metadata = args[0], [*metadata, *args[1:]]
    return annotation, metadata


def _members(annotation: Any) -> list[tuple[Any, list[Any]]]:
    """The members of a union (each with its Annotated metadata), None removed and nested unions
    (`Optional[Annotated[A | B, discriminator]]`) flattened; [itself] otherwise."""
    annotation, metadata = _unwrap(annotation)
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return [(annotation, metadata)]
    members: list[tuple[Any, list[Any]]] = []
    for arg in typing.get_args(annotation):
        if arg is type(None):
            continue
        inner, _ = _unwrap(arg)
        if typing.get_origin(inner) in (typing.Union, types.UnionType):
            members += _members(arg)
        else:
            members.append(_unwrap(arg))
    return members


def model_tag(model: type[BaseModel]) -> tuple[str, str] | None:
    """(key, value) of the single-valued Literal a model answers to, e.g. ('process', 'poisson')."""
    for key in TAG_KEYS:
        info = model.model_fields.get(key)
        if info is not None and typing.get_origin(info.annotation) is Literal:
            values = typing.get_args(info.annotation)
            if len(values) == 1 and isinstance(values[0], str):
                return key, values[0]
    return None


def _member_tag(member: Any, metadata: list[Any]) -> str | None:
    for item in metadata:
        if isinstance(item, Tag):
            return item.tag
    if inspect.isclass(member) and issubclass(member, BaseModel):
        tag = model_tag(member)
        return tag[1] if tag else None
    if typing.get_origin(member) is Literal:
        values = typing.get_args(member)
        return values[0] if len(values) == 1 and isinstance(values[0], str) else None
    return None


def annotation_at(root: type[BaseModel], loc: Sequence[str | int]) -> Any:
    """The annotation of the value at `loc`, or None where the location leaves the models."""
    annotation: Any = root
    for element in loc:
        members = _members(annotation)
        models = [m for m, _ in members if inspect.isclass(m) and issubclass(m, BaseModel)]
        if len(members) == 1 and models:
            fields = models[0].model_fields
            if not isinstance(element, str) or element not in fields:
                return None
            annotation = fields[element].annotation
            continue
        if len(members) > 1:  # a union: the location names the chosen member's tag
            chosen = [m for m, meta in members if _member_tag(m, meta) == element]
            if not chosen:
                return None
            annotation = chosen[0]
            continue
        origin = typing.get_origin(members[0][0])
        args = typing.get_args(members[0][0])
        if origin is list and isinstance(element, int):
            annotation = args[0]
        elif origin is dict and isinstance(element, str):
            annotation = args[1]
        else:
            return None
    return annotation


def keys_at(root: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The keys the model at `loc` accepts ([] where there is no single model there)."""
    members = _members(annotation_at(root, loc))
    models = [m for m, _ in members if inspect.isclass(m) and issubclass(m, BaseModel)]
    return list(models[0].model_fields) if len(models) == 1 and len(members) == 1 else []


def union_tags_at(root: type[BaseModel], loc: Sequence[str | int]) -> tuple[str | None, list[str]]:
    """(the key a union at `loc` is told apart by, its tags), e.g. ('process', ['constant', ...])."""
    members = _members(annotation_at(root, loc))
    tags = [t for m, meta in members if (t := _member_tag(m, meta)) is not None]
    keys = {
        tag[0]
        for m, _ in members
        if inspect.isclass(m) and issubclass(m, BaseModel) and (tag := model_tag(m)) is not None
    }
    return (keys.pop() if len(keys) == 1 else None), tags


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The choice a typo most likely meant, if any is close enough to suggest."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None
