"""What the node image holds, as its builder wrote it down: ``/etc/k4sinit/image.json``.

``rootfs/build.py`` writes the file; PID 1 reads it at boot to say plainly
what runs as the Kubernetes roles. An image built without a k4s multicall
binary carries the TEST STAND-INS of ``tests/standins/kube.py`` at
``/bbin/k4s``: the boot banner logs :meth:`ImageInfo.notice` as a warning,
and ``k4sinit status`` shows it on a line of its own. The file::

    {"kernel": "6.1.0-56-amd64",
     "k4s": {"kind": "standins" | "supplied", "path": "/bbin/k4s",
             "sha256": "...", "roles": ["kine", "kube-apiserver", ...]},
     "builtBy": "rootfs/build.py", ...}

Other keys are kept as they are (:meth:`ImageInfo.to_json`). Pure: no trio,
reads one file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PATH = "/etc/k4sinit/image.json"
STANDINS = "standins"  # k4s.kind: tests/standins/kube.py in the image's /bbin/k4s
SUPPLIED = "supplied"  # k4s.kind: a k4s binary given to the build (rootfs/build.py --k4s)
STANDIN_SOURCE = "tests/standins/kube.py"

__all__ = ["DEFAULT_PATH", "ImageInfo", "load"]


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """The image description read from ``path``; ``error`` says why it could not be read.

    ``data`` is the file's object as read (empty when ``error`` is set).
    """

    path: str
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def k4s(self) -> dict[str, Any]:
        """The ``k4s`` object (empty if the file has none)."""
        value = self.data.get("k4s")
        return value if isinstance(value, dict) else {}

    @property
    def kind(self) -> str | None:
        """``standins``, ``supplied``, or None when the file does not say."""
        kind = self.k4s.get("kind")
        return kind if isinstance(kind, str) else None

    @property
    def roles(self) -> list[str]:
        """The role names the image links to its k4s binary (``/bbin/<role>``)."""
        roles = self.k4s.get("roles")
        return [r for r in roles if isinstance(r, str)] if isinstance(roles, list) else []

    def notice(self) -> str | None:
        """What an operator must be told, in one line; None when there is nothing to say.

        An image with test stand-ins says so; so does an unreadable file or a
        k4s kind this k4sinit does not know. A supplied k4s needs no notice.
        """
        if self.error is not None:
            return f"image description {self.path} is unreadable: {self.error}"
        if self.kind == STANDINS:
            roles = ", ".join(sorted(self.roles)) or "the Kubernetes roles"
            return (
                f"{roles} are TEST STAND-INS ({STANDIN_SOURCE} in k4sinit's repository), "
                "not Kubernetes: built without a k4s binary (rootfs/build.py --k4s PATH)"
            )
        if self.kind not in (None, SUPPLIED):
            return f"image description {self.path}: unknown k4s kind {self.kind!r}"
        return None

    def to_json(self) -> dict[str, Any]:
        """The file's content plus ``path``, ``error`` and ``notice``, for status."""
        return {**self.data, "path": self.path, "error": self.error, "notice": self.notice()}


def load(path: str = DEFAULT_PATH) -> ImageInfo | None:
    """The image description at ``path``; None when there is no such file.

    Never raises: a file that cannot be read or is not a JSON object gives an
    :class:`ImageInfo` whose ``error`` (and so its notice) names the problem.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return ImageInfo(path, error=exc.strerror or str(exc))
    except UnicodeDecodeError as exc:
        return ImageInfo(path, error=f"not UTF-8: {exc}")
    try:
        data = json.loads(text)
    except ValueError as exc:
        return ImageInfo(path, error=f"not JSON: {exc}")
    if not isinstance(data, dict):
        return ImageInfo(path, error=f"not a JSON object but {type(data).__name__}")
    if "k4s" in data and not isinstance(data["k4s"], dict):
        return ImageInfo(path, data, error="k4s is not an object")
    return ImageInfo(path, data)
