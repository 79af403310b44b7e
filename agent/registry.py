"""Named plug-in types of one kind (rule types, analysers), filled by decorators as modules import."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """The ``kind`` registered by the modules of ``package`` (imported at the first look) and of
    any plug-in module imported since. A name is taken once: a second class under it is an error
    naming both, so a plug-in cannot silently replace a built-in."""

    def __init__(self, kind: str, package: str, path: Iterable[str]):
        self.kind, self.package, self.path = kind, package, list(path)
        self._entries: dict[str, tuple[str, T]] = {}

    def add(self, name: str, cls: type, entry: T) -> None:
        where = f"{cls.__module__}.{cls.__qualname__}"
        known = self._entries.get(name)
        if known is not None and known[0] != where:
            raise ValueError(f"{self.kind} {name!r}: {where} registers it, but {known[0]} already did")
        self._entries[name] = (where, entry)

    def all(self) -> dict[str, T]:
        for module in pkgutil.iter_modules(self.path):
            importlib.import_module(f"{self.package}.{module.name}")
        return {name: entry for name, (_, entry) in self._entries.items()}
