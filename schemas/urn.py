"""Function URNs: ``urn:fss:<region>:<project_id>:function:<package>:<name>:<version|alias>``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.errors import FSSError, bad_request

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,58}[A-Za-z0-9]$|^[A-Za-z]$")
PACKAGE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PROJECT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REGION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
QUALIFIER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

LATEST = "latest"


@dataclass(frozen=True, slots=True)
class FunctionUrn:
    region: str
    project_id: str
    package: str
    name: str
    qualifier: str = LATEST

    def __str__(self) -> str:
        return f"urn:fss:{self.region}:{self.project_id}:function:{self.package}:{self.name}:{self.qualifier}"

    @property
    def unqualified(self) -> str:
        """The URN without the version, the key a function is stored under."""
        return f"urn:fss:{self.region}:{self.project_id}:function:{self.package}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> FunctionUrn:
        """Parse a URN with or without the version/alias part (missing means ``latest``).

        ``urn:cff:`` (seen in SMN-side docs) is accepted as a synonym of ``urn:fss:``.
        """
        parts = text.split(":")
        if len(parts) not in (7, 8) or parts[0] != "urn" or parts[1] not in ("fss", "cff") or parts[4] != "function":
            raise bad_request(
                f"invalid function urn {text!r}: expected "
                "'urn:fss:<region>:<project_id>:function:<package>:<name>[:<version>]'"
            )
        region, project_id, package, name = parts[2], parts[3], parts[5], parts[6]
        qualifier = parts[7] if len(parts) == 8 else LATEST
        for label, value, pattern in (
            ("region", region, REGION_RE),
            ("project_id", project_id, PROJECT_RE),
            ("package", package, PACKAGE_RE),
            ("function name", name, NAME_RE),
            ("version", qualifier, QUALIFIER_RE),
        ):
            if not pattern.match(value):
                raise bad_request(f"invalid function urn {text!r}: bad {label} {value!r}")
        return cls(region, project_id, package.lower() if package == "DEFAULT" else package, name, qualifier)

    @classmethod
    def try_parse(cls, text: str) -> FunctionUrn | None:
        try:
            return cls.parse(text)
        except FSSError:
            return None
