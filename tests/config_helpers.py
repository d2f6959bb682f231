"""Helpers for the config tests: load a dedented config text and look at its errors."""

from __future__ import annotations

import textwrap

import pytest

from k4sinit.config import ConfigError, ConfigErrors, load_config_text
from k4sinit.core.config import Config
from k4sinit.core.spec import ServiceSpec


def load(text: str) -> Config:
    return load_config_text(textwrap.dedent(text).lstrip("\n"), "test.yaml")


def errors_of(text: str) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as caught:
        load(text)
    return caught.value.errors


def where(errors: list[ConfigError]) -> list[tuple[int | None, str | None, str | None]]:
    return [(e.line, e.service, e.field) for e in errors]


def only_error(text: str) -> ConfigError:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    return errors[0]


def one_service(body: str) -> ServiceSpec:
    """The spec of service ``s`` whose body is ``body`` (indented by the caller's 4 spaces)."""
    config = load("services:\n  s:\n" + textwrap.indent(textwrap.dedent(body), "    "))
    return config.services["s"]
