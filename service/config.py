"""Where the ledger keeps its data, from the environment (see ../shared/API.md, "Running")."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str

    @property
    def signing_key_path(self) -> Path:
        return self.data_dir / "ledger-signing.key"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        data_dir = Path(environ.get("LEDGER_DATA_DIR", "./ledger-data")).resolve()
        url = environ.get("LEDGER_DATABASE_URL") or f"sqlite+aiosqlite:///{data_dir / 'ledger.db'}"
        return cls(data_dir=data_dir, database_url=url)
