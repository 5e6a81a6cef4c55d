"""Semantic versions (semver 2.0.0 precedence), as the spec's "Version Semantics" uses them.

Why a parser of our own: it is 40 lines, and versions decide whether an upgrade is allowed, so the
rules must be exactly semver's, with errors a proposer can act on. Compare versions as parsed
`Version`s, never as strings: '1.2.0+build.1' and '1.2.0' are one version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ASCII only and matched whole (fullmatch, no `$`): Python's \d also matches other scripts' digits
# ('1\u0663.0.0' would read as 13.0.0) and `$` also matches before a final newline ('3.1.0\n').
# Written with [0-9] rather than \d so that the same text means the same in every regex dialect: the
# published request schema (node/core/schemas.py) carries it, and JSON Schema patterns are ECMA-262.
SEMVER_REGEX = (
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
_SEMVER = re.compile(SEMVER_REGEX, re.ASCII)
VERSION_LENGTH_MAX = 64


@dataclass(frozen=True, slots=True, order=False)
class Version:
    """A parsed version. Build metadata is not kept: semver precedence ignores it, so 1.2.0+build.1
    and 1.2.0 are the same version (equal, and neither greater), which is what "already proposed" needs."""
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()

    def _key(self) -> tuple:
        # A release ranks above its pre-releases; numeric identifiers rank below alphanumeric ones.
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 1 if not self.prerelease else 0, pre)

    def __lt__(self, other: "Version") -> bool:
        return self._key() < other._key()

    def __le__(self, other: "Version") -> bool:
        return self._key() <= other._key()

    def __gt__(self, other: "Version") -> bool:
        return self._key() > other._key()

    def __ge__(self, other: "Version") -> bool:
        return self._key() >= other._key()


def parse_version(text: object) -> Version:
    """Parse `MAJOR.MINOR.PATCH[-pre][+build]`; raises ValueError with a message a user can act on."""
    if not isinstance(text, str) or len(text) > VERSION_LENGTH_MAX:
        raise ValueError(f"version must be a semver string like '1.2.0' of at most {VERSION_LENGTH_MAX} characters")
    match = _SEMVER.fullmatch(text)
    if match is None:
        raise ValueError(f"version {text!r} is not semver: use MAJOR.MINOR.PATCH, e.g. '1.2.0'")
    major, minor, patch, pre, _build = match.groups()
    return Version(int(major), int(minor), int(patch), tuple(pre.split(".")) if pre else ())


def is_valid_version(text: object) -> bool:
    try:
        parse_version(text)
    except ValueError:
        return False
    return True
