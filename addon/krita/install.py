"""``keyface krita install`` / ``uninstall``: put the plugin where Krita looks for Python plugins and enable it.

Krita runs its own Python (no numpy, no torch), so the plugin in the pykrita folder is a small *shim* that, at Krita's
start, adds the site-packages of the environment keyface was installed in (recorded in ``environment.json``) to
``sys.path`` and then imports ``keyface.addon.krita.plugin``. Krita's PyQt5 is imported *before* those paths are added
and the paths are appended, never prepended, so the environment's own PyQt5 wheel can never replace Krita's (two Qt
libraries in one process crash). The shim also checks that Krita's Python has the environment's version (compiled
packages need it) and, if anything fails, shows the reason in a "keyface" docker instead of failing silently.

Files: ``<pykrita>/keyface_krita.desktop``, ``<pykrita>/keyface_krita/{__init__.py,environment.json}``, and the line
``enable_keyface_krita=true`` in the ``[python]`` section of ``kritarc``. Uninstall removes exactly these.
Krita rewrites kritarc when it quits: install and uninstall with Krita closed.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import sys
from pathlib import Path

from keyface.core.errors import KeyfaceError
from keyface.core.io import atomic_write_text

PLUGIN = "keyface_krita"
MARKER = "written by `keyface krita install`"

DESKTOP = f"""[Desktop Entry]
Type=Service
ServiceTypes=Krita/PythonPlugin
X-KDE-Library={PLUGIN}
X-Python-2-Compatible=false
X-Krita-Manual=
Name=keyface
Comment=Animate the current painting (pose, expression) into a new animated layer
"""

SHIM = '''"""keyface for Krita ({marker}; `keyface krita uninstall` removes it)."""

import json
import sys
import traceback
from pathlib import Path


def _load():
    import PyQt5.QtCore  # noqa: F401  Krita's own PyQt5, bound before any other path is added
    import PyQt5.QtGui  # noqa: F401
    import PyQt5.QtWidgets  # noqa: F401

    env = json.loads(Path(__file__).with_name("environment.json").read_text(encoding="utf-8"))
    want = tuple(env["python"])
    if sys.version_info[:2] != want:
        raise RuntimeError("keyface was installed for Python %d.%d but Krita runs Python %d.%d: run "
                           "`keyface krita install` from an environment made with Python %d.%d"
                           % (want + sys.version_info[:2] + sys.version_info[:2]))
    import site

    for path in env["site_packages"]:
        if path not in sys.path:
            site.addsitedir(path)  # appended after Krita's paths (and .pth files processed)
    try:
        import keyface.addon.krita.plugin as plugin
    except ModuleNotFoundError as exc:
        if exc.name not in ("keyface", "keyface.addon"):
            raise
        import types

        package = types.ModuleType("keyface")
        package.__path__ = [env["package_root"]]
        sys.modules["keyface"] = package
        import keyface.addon.krita.plugin as plugin
    plugin.register()


def _error_docker(message):
    from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Krita
    from PyQt5.QtWidgets import QLabel

    class ErrorDocker(DockWidget):
        def __init__(self):
            super().__init__()
            self.setWindowTitle("keyface")
            label = QLabel("keyface could not start:\\n" + message)
            label.setWordWrap(True)
            self.setWidget(label)

        def canvasChanged(self, canvas):
            pass

    Krita.instance().addDockWidgetFactory(
        DockWidgetFactory("keyface_docker", DockWidgetFactoryBase.DockRight, ErrorDocker))


try:
    _load()
except Exception as exc:
    traceback.print_exc()
    _error_docker(str(exc))
'''


def krita_paths() -> tuple[Path, Path]:
    """(pykrita folder, kritarc) for this platform's Krita."""
    home = Path.home()
    if sys.platform == "win32":
        appdata = Path(os.environ.get("APPDATA", home / "AppData" / "Roaming"))
        local = Path(os.environ.get("LOCALAPPDATA", home / "AppData" / "Local"))
        return appdata / "krita" / "pykrita", local / "kritarc"
    if sys.platform == "darwin":
        library = home / "Library"
        return library / "Application Support" / "krita" / "pykrita", library / "Preferences" / "kritarc"
    data = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return data / "krita" / "pykrita", config / "kritarc"


def environment() -> dict:
    """What the shim needs to import keyface from the running interpreter's environment."""
    import keyface.core

    paths = [p for p in site.getsitepackages() if Path(p).is_dir()]
    user = site.getusersitepackages()
    if site.ENABLE_USER_SITE and Path(user).is_dir():
        paths.append(user)
    return {"python": list(sys.version_info[:2]), "executable": sys.executable, "site_packages": paths,
            "package_root": str(Path(keyface.core.__file__).resolve().parent.parent)}


def set_ini_value(text: str, section: str, key: str, value: str | None) -> str:
    """``text`` (an INI file such as kritarc) with ``key`` in ``[section]`` set to ``value`` (``None``: removed).
    Every other line is kept as it was (no reformatting of Krita's file)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip() == f"[{section}]"), None)
    if start is None:
        if value is None:
            return text
        if lines and lines[-1].strip():
            lines.append("")
        lines += [f"[{section}]", f"{key}={value}"]
        return "\n".join(lines) + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("[")), len(lines))
    hit = next((i for i in range(start + 1, end) if lines[i].split("=", 1)[0].strip() == key), None)
    if hit is not None:
        if value is None:
            del lines[hit]
        else:
            lines[hit] = f"{key}={value}"
    elif value is not None:
        insert = end
        while insert > start + 1 and not lines[insert - 1].strip():
            insert -= 1
        lines.insert(insert, f"{key}={value}")
    return "\n".join(lines) + "\n"


def install(pykrita: Path | None = None, kritarc: Path | None = None) -> list[str]:
    """Write the plugin and enable it; returns what was done, one line each."""
    default_py, default_rc = krita_paths()
    pykrita, kritarc = Path(pykrita or default_py), Path(kritarc or default_rc)
    env = environment()
    folder = pykrita / PLUGIN
    if folder.exists() and not _ours(folder):
        raise KeyfaceError(f"{folder} exists and was not written by keyface: move it away first")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(pykrita / f"{PLUGIN}.desktop", DESKTOP)
    atomic_write_text(folder / "environment.json", json.dumps(env, indent=1))
    atomic_write_text(folder / "__init__.py", SHIM.format(marker=MARKER))
    old = kritarc.read_text(encoding="utf-8") if kritarc.exists() else ""
    kritarc.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(kritarc, set_ini_value(old, "python", f"enable_{PLUGIN}", "true"))
    return [f"plugin: {folder} (+ {PLUGIN}.desktop)",
            f"enabled in {kritarc}",
            f"Python environment: {env['executable']} (Python {env['python'][0]}.{env['python'][1]})",
            "restart Krita, then Settings → Dockers → keyface"]


def uninstall(pykrita: Path | None = None, kritarc: Path | None = None) -> list[str]:
    default_py, default_rc = krita_paths()
    pykrita, kritarc = Path(pykrita or default_py), Path(kritarc or default_rc)
    done = []
    folder = pykrita / PLUGIN
    if folder.exists():
        if not _ours(folder):
            raise KeyfaceError(f"{folder} was not written by keyface: left alone")
        shutil.rmtree(folder)
        done.append(f"removed {folder}")
    desktop = pykrita / f"{PLUGIN}.desktop"
    if desktop.exists():
        desktop.unlink()
        done.append(f"removed {desktop}")
    if kritarc.exists():
        old = kritarc.read_text(encoding="utf-8")
        new = set_ini_value(old, "python", f"enable_{PLUGIN}", None)
        if new != old:
            atomic_write_text(kritarc, new)
            done.append(f"disabled in {kritarc}")
    return done or ["keyface was not installed there"]


def _ours(folder: Path) -> bool:
    init = folder / "__init__.py"
    return init.exists() and MARKER in init.read_text(encoding="utf-8", errors="replace")
