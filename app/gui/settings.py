"""What the window remembers between runs (QSettings): folders, HF cache choice, geometry."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, QStandardPaths


class AppSettings:
    def __init__(self, path: Path | None = None) -> None:
        # Tests and portable installs pass a file; otherwise the platform's usual place.
        self._qs = (QSettings(str(path), QSettings.Format.IniFormat) if path is not None
                    else QSettings("Modelyard", "Modelyard"))

    def folders(self) -> list[Path]:
        raw = self._qs.value("sources/folders", [])
        items = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        return [Path(str(p)) for p in items]

    def set_folders(self, folders: list[Path]) -> None:
        self._qs.setValue("sources/folders", [str(f) for f in folders])
        self._qs.sync()

    def show_hf_cache(self) -> bool:
        return str(self._qs.value("sources/hf_cache", "true")).lower() == "true"

    def set_show_hf_cache(self, show: bool) -> None:
        self._qs.setValue("sources/hf_cache", "true" if show else "false")

    def hf_cache_dir(self) -> Path | None:
        raw = self._qs.value("sources/hf_cache_dir", "")
        return Path(str(raw)) if raw else None

    def set_hf_cache_dir(self, path: Path | None) -> None:
        self._qs.setValue("sources/hf_cache_dir", str(path) if path else "")

    def fit_parameters(self) -> tuple[str, float, float, int]:
        """(target kind, custom VRAM GiB, custom RAM GiB, context tokens)."""
        qs = self._qs
        return (str(qs.value("fit/target", "machine")),
                float(str(qs.value("fit/vram_gib", 24.0))),
                float(str(qs.value("fit/ram_gib", 32.0))), int(str(qs.value("fit/context", 4096))))

    def set_fit_parameters(self, kind: str, vram_gib: float, ram_gib: float,
                           context: int) -> None:
        for key, value in (("target", kind), ("vram_gib", vram_gib), ("ram_gib", ram_gib),
                           ("context", context)):
            self._qs.setValue(f"fit/{key}", value)

    def window_state(self, key: str) -> QByteArray | None:
        value = self._qs.value(f"window/{key}")
        return value if isinstance(value, QByteArray) else None

    def set_window_state(self, key: str, value: QByteArray) -> None:
        self._qs.setValue(f"window/{key}", value)

    def last_dialog_folder(self) -> Path | None:
        raw = self._qs.value("sources/last_dialog_folder", "")
        return Path(str(raw)) if raw else None

    def set_last_dialog_folder(self, path: Path) -> None:
        self._qs.setValue("sources/last_dialog_folder", str(path))

    def log_dir(self) -> Path:
        raw = self._qs.value("jobs/log_dir", "")
        if raw:
            return Path(str(raw))
        base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
        return Path(base or Path.home() / ".modelyard") / "logs"

    def set_log_dir(self, path: Path) -> None:
        self._qs.setValue("jobs/log_dir", str(path))

    def file_name(self) -> str:
        return self._qs.fileName()

    def sync(self) -> None:
        self._qs.sync()
