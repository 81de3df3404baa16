"""Hydra plugins shipped with the package (``hydra_plugins/slots_launcher``, ``jobs_sweeper``)."""

from __future__ import annotations

from pathlib import Path


def find_own_plugins() -> None:
    """Let Hydra find ``hydra/launcher=slots`` and ``hydra/sweeper=jobs`` under an editable
    install too.

    Hydra finds plugins by walking the ``hydra_plugins`` namespace package's folders; a wheel
    puts ours in site-packages/hydra_plugins, but setuptools' editable install serves
    ``src/hydra_plugins`` through an import hook that such a walk cannot list. So an entry point
    adds the folder itself before Hydra starts (nothing changes where it is listed already).
    """
    import hydra_plugins

    own = str(Path(__file__).resolve().parent.parent / "hydra_plugins")
    if Path(own).is_dir() and own not in list(hydra_plugins.__path__):
        hydra_plugins.__path__.append(own)
