"""The registry of semi-supervised methods: ``@register_method("name")``, plugins, config validation.

A new method is one file::

    from medssl.methods import MethodConfig, SemiMethod, register_method

    class MyConfig(MethodConfig):
        weight: float = 0.1

    @register_method("my_method")
    class MyMethod(SemiMethod):
        config_class = MyConfig
        ...

Importing the file registers the method; the command line, ``SemiTrainConfig`` (its ``method_config``
section is validated by the method's config class) and :func:`create_method` then know it. Methods
outside the package are found without editing medssl in two ways:

* ``MEDSSL_PLUGINS=my_package.my_method,other_module``: modules imported before the registry is read
  (what a researcher with a file on ``PYTHONPATH`` uses);
* an installed distribution's entry point in the group ``medssl.methods`` (what a package uses).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from medssl.errors import MedsslInputError
from medssl.methods.base import MethodConfig, SemiMethod

#: Environment variable naming plugin modules (comma-separated) imported before the registry is read.
PLUGINS_ENV = "MEDSSL_PLUGINS"
#: Entry-point group whose entries (modules or objects) are loaded before the registry is read.
ENTRY_POINT_GROUP = "medssl.methods"

METHODS: dict[str, type[SemiMethod]] = {}
_loaded_plugins: set[str] = set()
_entry_points_loaded = False

MethodT = TypeVar("MethodT", bound=type[SemiMethod])


def register_method(name: str) -> Callable[[MethodT], MethodT]:
    """Class decorator: register a :class:`SemiMethod` subclass as ``name`` (sets ``cls.name``).

    Raises:
        ValueError: ``name`` is already taken by another class, or the class has no ``config_class``.
    """

    def decorate(cls: MethodT) -> MethodT:
        if not (isinstance(cls, type) and issubclass(cls, SemiMethod)):
            raise TypeError(f"@register_method({name!r}) decorates SemiMethod subclasses, got {cls!r}")
        config_class = getattr(cls, "config_class", None)
        if not (isinstance(config_class, type) and issubclass(config_class, MethodConfig)):
            raise ValueError(f"method {name!r}: {cls.__name__}.config_class must be a MethodConfig subclass")
        other = METHODS.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"method name {name!r} is taken by {other.__module__}.{other.__qualname__}")
        cls.name = name
        METHODS[name] = cls
        return cls

    return decorate


def load_plugins() -> None:
    """Import the modules named by ``$MEDSSL_PLUGINS`` and the ``medssl.methods`` entry points (once each).

    Raises:
        MedsslInputError: a plugin module cannot be imported.
    """
    global _entry_points_loaded
    for module in (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",")):
        if module and module not in _loaded_plugins:
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise MedsslInputError(PLUGINS_ENV, f"cannot import plugin module {module!r}: {err}") from None
            _loaded_plugins.add(module)
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()


def available_methods() -> dict[str, type[SemiMethod]]:
    """Every registered method by name (plugins loaded first), sorted by name."""
    load_plugins()
    return dict(sorted(METHODS.items()))


def get_method(name: str) -> type[SemiMethod]:
    """The class registered as ``name``.

    Raises:
        MedsslInputError: unknown name (the message lists the registered ones).
    """
    methods = available_methods()
    if name not in methods:
        raise MedsslInputError("method", f"unknown method {name!r}; valid methods: {', '.join(methods)}")
    return methods[name]


def describe_validation_error(err: ValidationError) -> str:
    """One line ``where: message; ...`` for a pydantic error of a method config."""
    parts = []
    for e in err.errors():
        where = ".".join(str(x) for x in e["loc"]) or "config"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def method_config(name: str, config: Mapping[str, Any] | BaseModel | None = None) -> MethodConfig:
    """Validate ``config`` (a dict, a config object or ``None`` for the defaults) for method ``name``.

    Keys given in ``config`` stay the config's set fields (``model_fields_set``), so run-dependent
    defaults can still be filled (see :meth:`SemiMethod.settings_from_run`).

    Raises:
        MedsslInputError: unknown method name (the message lists the valid ones) or invalid values.
    """
    cls = get_method(name).config_class
    if type(config) is cls:
        return config
    data = config.model_dump(exclude_unset=True) if isinstance(config, BaseModel) else dict(config or {})
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise MedsslInputError(f"method {name} config", describe_validation_error(err)) from None


def create_method(name: str, config: Mapping[str, Any] | BaseModel | None = None) -> SemiMethod:
    """Build the method registered as ``name`` with ``config`` (see :func:`method_config`)."""
    return get_method(name)(method_config(name, config))


__all__ = ["ENTRY_POINT_GROUP", "METHODS", "PLUGINS_ENV", "available_methods", "create_method",
           "describe_validation_error", "get_method", "load_plugins", "method_config", "register_method"]
