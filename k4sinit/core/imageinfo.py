"""What the node image holds, as its builder wrote it down: ``/etc/k4sinit/image.json``.

``rootfs/build.py`` writes the file; PID 1 reads it once at boot to say what
runs as the node's roles: the boot banner logs :meth:`ImageInfo.summary`, and
``k4sinit status`` shows it on a line of its own. The file::

    {"kernel": "6.1.0-56-amd64",
     "k4s": {"path": "/bbin/k4s", "sha256": "...", "roles": ["kine", ...],
             "source": "rootfs/k4s"},
     "versions": {"kubernetes": "v1.37.2", "containerd": "v2.4.2", "kine": "v0.17.5",
                  "runc": "v1.5.3", ...},
     "builtBy": "rootfs/build.py", ...}

Other keys are kept as they are (:meth:`ImageInfo.to_json`). Pure: no trio,
reads one file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PATH = "/etc/k4sinit/image.json"
#: The order in which the summary names the upstream versions (others follow, sorted).
VERSION_ORDER = ("kubernetes", "containerd", "kine", "etcd", "coredns", "runc", "cni-plugins")

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
    def roles(self) -> list[str]:
        """The role names the image links to its k4s binary (``/bbin/<role>``)."""
        roles = self.k4s.get("roles")
        return [r for r in roles if isinstance(r, str)] if isinstance(roles, list) else []

    @property
    def versions(self) -> dict[str, str]:
        """Upstream component -> version (``kubernetes`` -> ``v1.37.2``), as built."""
        value = self.data.get("versions")
        if not isinstance(value, dict):
            return {}
        return {str(k): str(v) for k, v in value.items() if isinstance(v, str)}

    def summary(self) -> str:
        """One line for people: the versions inside, or what is wrong with the file."""
        notice = self.notice()
        if notice is not None:
            return notice
        versions = self.versions
        if not versions:
            return f"{self.path} names no Kubernetes components"
        order = [k for k in VERSION_ORDER if k in versions]
        order += sorted(k for k in versions if k not in VERSION_ORDER and k != "go")
        return ", ".join(f"{k} {versions[k]}" for k in order)

    def notice(self) -> str | None:
        """A problem an operator must be told of, in one line; None when there is none."""
        if self.error is not None:
            return f"image description {self.path} is unreadable: {self.error}"
        return None

    def to_json(self) -> dict[str, Any]:
        """The file's content plus ``path``, ``error``, ``notice`` and ``summary``, for status."""
        return {
            **self.data,
            "path": self.path,
            "error": self.error,
            "notice": self.notice(),
            "summary": self.summary(),
        }


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
    if "versions" in data and not isinstance(data["versions"], dict):
        return ImageInfo(path, data, error="versions is not an object")
    return ImageInfo(path, data)
