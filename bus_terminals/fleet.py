"""A terminal's fleet packages (`bus_terminals.packages`): verified, staged durably, switched at
their effective time, and reported on every sync.

Sync offers the packages newer than the ones the terminal runs; for each, the terminal checks
the manifest's signature (the back office's fleet key), fetches the content, checks its hash,
its validity (a fare feed passes the feed validation) and that its version is newer than the
one running, and only then *stages* it: the content file is written durably first, then the
state file that names it (each by `replace_file`: whole or not at all). A staged package
becomes the running one when the terminal's clock passes its effective time (`switch_due`,
called on every sync round and before every tap's decision): again one replace of the state
file, so a power cut leaves either the old version running or the new one, never a mixture,
and a terminal restarted between staging and the effective time still switches.

A refused package is remembered (so it is not fetched again each round) and reported on the next
sync; the running version stays. Each kind's running content reaches the terminal through an
`applier` (the deny list into the sync state, the key version into the terminal's keys); the
validator reads the running fare feed with `tariff()` and the sync loop the settings.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bus_terminals.fare.feed import compile_feed
from bus_terminals.fare.tariff import Tariff
from bus_terminals.packages import (
    PackageError,
    PackageKind,
    Refusal,
    SignedManifest,
    feed_texts,
    integer_table,
    key_version_ranges,
    setting_ranges,
    verify_content,
    verify_manifest,
)
from card_reader.durable import replace_file
from card_reader.keys import CardKeys, KeyRole

logger = logging.getLogger("ksh.fleet")

staged_per_kind_max = 4  # a few versions ahead (the back office offers no more)
refusals_kept_max = 16  # remembered so as not to fetch them again; the newest per kind reported

Applier = Callable[[bytes], None]  # the running content of one kind, put to use
# A key-version package's {role: version} -> what this terminal lacks of it ("" = all held)
KeyCheck = Callable[[dict[str, int]], str]


@dataclass(frozen=True, slots=True)
class RefusedPackage:
    kind: PackageKind
    version: int
    refusal: Refusal
    message: str


class Fleet:
    def __init__(self, folder: Path, public_key: Ed25519PublicKey) -> None:
        self.folder = folder  # the terminal's state folder / "fleet"
        self.public_key = public_key  # the back office's fleet key (public half)
        self.running: dict[PackageKind, SignedManifest] = {}
        self.staged: dict[PackageKind, list[SignedManifest]] = {}
        self.refused: list[RefusedPackage] = []
        self.appliers: dict[PackageKind, Applier] = {}
        self.key_check: KeyCheck | None = None
        # The tap thread switches and reads, the sync thread stages: one lock for the state.
        self._lock = threading.RLock()
        self._tariff: tuple[int, Tariff] | None = None

    # ------------------------------------------------------------------ durable state

    @property
    def state_path(self) -> Path:
        return self.folder / "fleet-state.json"

    def content_path(self, manifest: SignedManifest) -> Path:
        return self.folder / f"{manifest.manifest.kind.value}-{manifest.manifest.version}.bin"

    @classmethod
    def open(cls, folder: Path, public_key: Ed25519PublicKey) -> Fleet:
        """The fleet state saved in `folder` (empty when there is none), each package checked
        again against its signature and its content file; ValueError if damaged."""
        fleet = cls(folder, public_key)
        folder.mkdir(parents=True, exist_ok=True)
        if not fleet.state_path.exists():
            return fleet
        try:
            saved = json.loads(fleet.state_path.read_text())
            fleet.running = {
                PackageKind(kind): fleet._reloaded(signed)
                for kind, signed in saved["running"].items()
            }
            fleet.staged = {
                PackageKind(kind): [fleet._reloaded(signed) for signed in listed]
                for kind, listed in saved["staged"].items()
            }
            fleet.refused = [
                RefusedPackage(PackageKind(kind), version, Refusal(refusal), message)
                for kind, version, refusal, message in saved["refused"]
            ]
        except (KeyError, TypeError, ValueError, OSError, binascii.Error) as error:
            raise ValueError(f"{fleet.state_path}: damaged fleet state ({error})") from error
        return fleet

    def _reloaded(self, saved: dict[str, str]) -> SignedManifest:
        signed = verify_manifest(
            self.public_key, base64.b64decode(saved["manifest"]), saved["signature"]
        )
        verify_content(signed.manifest, self.content_path(signed).read_bytes())
        return signed

    def _save(self) -> None:
        state = {
            "running": {kind.value: signed.to_json() for kind, signed in self.running.items()},
            "staged": {
                kind.value: [signed.to_json() for signed in listed]
                for kind, listed in self.staged.items()
                if listed
            },
            "refused": [
                [refused.kind.value, refused.version, refused.refusal.value, refused.message]
                for refused in self.refused
            ],
        }
        replace_file(self.state_path, json.dumps(state, sort_keys=True).encode())

    # ------------------------------------------------------------------ what runs

    def running_version(self, kind: PackageKind) -> int:
        signed = self.running.get(kind)
        return signed.manifest.version if signed else 0

    def running_content(self, kind: PackageKind) -> bytes | None:
        with self._lock:
            signed = self.running.get(kind)
            return None if signed is None else self.content_path(signed).read_bytes()

    def tariff(self) -> Tariff | None:
        """The running fare feed compiled (None: no feed package yet, the shipped one serves)."""
        with self._lock:
            version = self.running_version(PackageKind.fare_feed)
            if not version:
                return None
            if self._tariff is None or self._tariff[0] != version:
                content = self.running_content(PackageKind.fare_feed)
                assert content is not None
                self._tariff = (version, compile_feed(feed_texts(content)))  # checked when staged
            return self._tariff[1]

    def settings(self) -> dict[str, int]:
        content = self.running_content(PackageKind.settings)
        return {} if content is None else integer_table(content, setting_ranges, "settings")

    def apply_with(self, kind: PackageKind, applier: Applier) -> None:
        """Put `kind`'s running content to use now, and again at each switch."""
        with self._lock:
            self.appliers[kind] = applier
            content = self.running_content(kind)
            if content is not None:
                applier(content)

    # ------------------------------------------------------------------ staging

    def wants(self, kind: PackageKind, version: int) -> bool:
        """An offered package not yet running, staged or refused."""
        with self._lock:
            return (
                version > self.running_version(kind)
                and all(signed.manifest.version != version for signed in self.staged.get(kind, []))
                and not any(r.kind is kind and r.version == version for r in self.refused)
            )

    def check_offer(
        self, kind: PackageKind, version: int, raw: bytes, signature: str
    ) -> SignedManifest | None:
        """The offered manifest, if it is signed by the fleet key and is what was offered;
        otherwise refused (None)."""
        try:
            signed = verify_manifest(self.public_key, raw, signature)
        except PackageError as error:
            self.refuse(kind, version, error.refusal, str(error))
            return None
        if (signed.manifest.kind, signed.manifest.version) != (kind, version):
            self.refuse(kind, version, Refusal.malformed, "the manifest is not the one offered")
            return None
        return signed

    def stage(self, signed: SignedManifest, content: bytes) -> Refusal | None:
        """Check the content and keep it for its effective time; the refusal, or None."""
        manifest = signed.manifest
        try:
            verify_content(manifest, content)
            if manifest.kind is PackageKind.key_version and self.key_check is not None:
                missing = self.key_check(integer_table(content, key_version_ranges, "key versions"))
                if missing:
                    raise PackageError(Refusal.key_not_held, missing)
        except PackageError as error:
            self.refuse(manifest.kind, manifest.version, error.refusal, str(error))
            return error.refusal
        with self._lock:
            if manifest.version <= self.running_version(manifest.kind):
                message = f"version {manifest.version} is not newer than the one running"
                self.refuse(manifest.kind, manifest.version, Refusal.stale_version, message)
                return Refusal.stale_version
            replace_file(self.content_path(signed), content)  # the content first, then its name
            listed = sorted(
                [*self.staged.get(manifest.kind, []), signed], key=lambda s: s.manifest.version
            )
            previous = self.staged
            self.staged = {**self.staged, manifest.kind: listed[-staged_per_kind_max:]}
            try:
                self._save()
            except OSError:
                self.staged = previous  # not staged; fetched again next round
                raise
            for dropped in listed[:-staged_per_kind_max]:
                self.content_path(dropped).unlink(missing_ok=True)
        logger.info("staged %s version %d", manifest.kind.value, manifest.version)
        return None

    def refuse(self, kind: PackageKind, version: int, refusal: Refusal, message: str) -> None:
        logger.error("refused %s version %d: %s (%s)", kind.value, version, refusal.value, message)
        with self._lock:
            kept = [r for r in self.refused if (r.kind, r.version) != (kind, version)]
            self.refused = [*kept, RefusedPackage(kind, version, refusal, message[:200])][
                -refusals_kept_max:
            ]
            self._save()

    # ------------------------------------------------------------------ switching

    def switch_due(self, now_ms: int) -> list[PackageKind]:
        """Run, of each kind, the newest staged package whose effective time has come."""
        with self._lock:
            # Called on every tap: nothing due (the usual case) costs one scan, no copies.
            if not any(
                signed.manifest.effective_at_ms <= now_ms
                for listed in self.staged.values()
                for signed in listed
            ):
                return []
            running, staged = dict(self.running), dict(self.staged)
            switched: list[PackageKind] = []
            obsolete: list[SignedManifest] = []  # their files go once the switch is saved
            for kind, listed in self.staged.items():
                due = [signed for signed in listed if signed.manifest.effective_at_ms <= now_ms]
                if not due:
                    continue
                newest = due[-1]  # staged lists are in version order
                obsolete += due[:-1] + ([running[kind]] if kind in running else [])
                running[kind] = newest
                staged[kind] = [s for s in listed if s.manifest.version > newest.manifest.version]
                switched.append(kind)
            if not switched:
                return []
            previous = self.running, self.staged
            self.running, self.staged = running, staged
            try:
                self._save()  # the one step that switches: the old version runs until it is done
            except OSError:
                self.running, self.staged = previous
                raise
            for signed in obsolete:
                self.content_path(signed).unlink(missing_ok=True)
            for kind in switched:
                logger.info("switched to %s version %d", kind.value, self.running_version(kind))
                applier = self.appliers.get(kind)
                if applier is not None:
                    content = self.running_content(kind)
                    assert content is not None
                    applier(content)
            return switched

    # ------------------------------------------------------------------ reporting

    def report_query(self) -> str:
        """What runs, what is staged and the newest refusal, per kind, as sync query parameters
        (`running=fare_feed:3,settings:1&staged=...&refused=fare_feed:5:signature_invalid`)."""
        with self._lock:
            running = [
                f"{kind.value}:{signed.manifest.version}" for kind, signed in self.running.items()
            ]
            staged = [
                f"{kind.value}:{listed[-1].manifest.version}"
                for kind, listed in self.staged.items()
                if listed
            ]
            # The newest refusal of each kind, while it is newer than what runs (then history).
            newest_refused = {refused.kind: refused for refused in self.refused}
            refused = [
                f"{r.kind.value}:{r.version}:{r.refusal.value}"
                for r in newest_refused.values()
                if r.version > self.running_version(r.kind)
            ]
        parts = [
            f"{name}={','.join(sorted(values))}"
            for name, values in (("running", running), ("staged", staged), ("refused", refused))
            if values
        ]
        return "".join("&" + part for part in parts)


def use_key_versions(fleet: Fleet, keys: CardKeys) -> None:
    """Key-version packages on a terminal holding `keys`: refused at staging when it lacks the
    key material of a version named for one of its roles (the key store brings the keys; the
    package only names the current version), and made current at the switch."""

    def held(versions: dict[str, int]) -> dict[KeyRole, int]:
        roles = {role.value: role for role in keys.roles}
        return {roles[name]: version for name, version in versions.items() if name in roles}

    def missing(versions: dict[str, int]) -> str:
        lacking = [
            f"{role.value} version {version}"
            for role, version in held(versions).items()
            if not keys.holds(role, version)
        ]
        return "no key material here for " + ", ".join(lacking) if lacking else ""

    def apply(content: bytes) -> None:
        for role, version in held(
            integer_table(content, key_version_ranges, "key versions")
        ).items():
            if keys.holds(role, version):  # checked when staged; the store could have changed
                keys.use_current(role, version)
            else:
                logger.error(
                    "key %s version %d not held: the current one stays", role.value, version
                )

    fleet.key_check = missing
    fleet.apply_with(PackageKind.key_version, apply)
