"""``keyface blender install`` / ``uninstall``: put the add-on where Blender finds it and enable it.

Blender runs its own Python (no torch, and often another numpy), so the add-on in Blender's scripts folder is a small
*shim*: when Blender enables it, it checks that Blender's Python has the version of the environment keyface was
installed in (compiled packages need it), appends that environment's site-packages (recorded in
``environment.json``) to ``sys.path`` *after* Blender's own, imports ``keyface.addon.blender.addon`` and registers
it. If anything fails, the shim registers a *keyface* sidebar panel that shows the reason instead.

Files: ``<scripts>/addons/keyface_blender/{__init__.py,environment.json}`` and
``<scripts>/startup/keyface_blender_enable.py``, which enables the add-on the first time Blender starts after the
install (and marks that it did, so disabling it later in the Preferences is respected). Uninstall removes exactly
these. ``<scripts>`` is Blender's user scripts folder (``~/.config/blender/4.5/scripts`` on Linux) or ``--scripts``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from keyface.core.errors import KeyfaceError
from keyface.core.io import atomic_write_text

ADDON = "keyface_blender"
ENABLER = "keyface_blender_enable.py"
MARKER = "written by `keyface blender install`"
BLENDER_VERSION = "4.5"

SHIM = '''"""keyface for Blender ({marker}; `keyface blender uninstall` removes it)."""

bl_info = {{
    "name": "keyface",
    "author": "keyface",
    "version": ({version}),
    "blender": (3, 4, 0),
    "location": "Image Editor / Sequencer > Sidebar > keyface",
    "description": "Animate a painted character with keyface: keyed parameters, neural generators, full resolution",
    "category": "Animation",
}}

import json
import sys
import traceback
from pathlib import Path

_module = None
_error_classes = []


def _load():
    env = json.loads(Path(__file__).with_name("environment.json").read_text(encoding="utf-8"))
    want = tuple(env["python"])
    if sys.version_info[:2] != want:
        raise RuntimeError("keyface was installed from Python %d.%d but this Blender runs Python %d.%d: run "
                           "`keyface blender install` from an environment made with Python %d.%d (Blender 4.1-4.5 "
                           "use 3.11)" % (want + sys.version_info[:2] + sys.version_info[:2]))
    import site

    for path in env["site_packages"]:
        if path not in sys.path:
            site.addsitedir(path)  # appended after Blender's own paths (and .pth files processed)
    try:
        import keyface.addon.blender.addon as module
    except ModuleNotFoundError as exc:
        if exc.name not in ("keyface", "keyface.addon", "keyface.addon.blender"):
            raise RuntimeError("keyface's environment misses %s (%s): run bin/setup there, then "
                               "`keyface blender install` again" % (exc.name, env["executable"])) from exc
        import types

        package = types.ModuleType("keyface")
        package.__path__ = [env["package_root"]]
        sys.modules["keyface"] = package
        import keyface.addon.blender.addon as module
    return module


def _error_panel(message):
    import bpy

    class KEYFACE_PT_error(bpy.types.Panel):
        bl_space_type = "IMAGE_EDITOR"
        bl_region_type = "UI"
        bl_category = "keyface"
        bl_label = "keyface could not start"

        def draw(self, context):
            for line in message.splitlines() or [message]:
                for i in range(0, len(line), 60):
                    self.layout.label(text=line[i:i + 60], icon="ERROR" if i == 0 else "NONE")

    bpy.utils.register_class(KEYFACE_PT_error)
    _error_classes.append(KEYFACE_PT_error)


def register():
    global _module
    try:
        _module = _load()
        _module.register()
    except Exception as exc:
        traceback.print_exc()
        _module = None
        _error_panel("%s: %s" % (type(exc).__name__, exc))


def unregister():
    import bpy

    if _module is not None:
        _module.unregister()
    for cls in _error_classes:
        bpy.utils.unregister_class(cls)
    _error_classes.clear()
'''

ENABLE = '''"""Enables the keyface add-on once, at Blender's first start after `keyface blender install` ({marker})."""

from pathlib import Path


def register():
    import addon_utils
    import bpy

    done = Path(__file__).resolve().parent.parent / "addons" / "{addon}" / "enabled_once"
    if done.exists():
        return
    if "{addon}" not in {{a.module for a in bpy.context.preferences.addons}}:
        import sys

        for path in addon_utils.paths():  # startup modules run before Blender adds the add-on folders
            if path not in sys.path:
                sys.path.append(path)
        if addon_utils.enable("{addon}", default_set=True, persistent=True) is None:
            return  # reported on the console by Blender; tried again at the next start
        bpy.context.preferences.is_dirty = True  # Blender saves its preferences (with the add-on) when it quits
    if bpy.app.background:
        return  # no preferences are saved in background mode: enable again at the next start
    try:
        done.write_text("the keyface add-on was enabled once; disabling it in the Preferences is kept\\n")
    except OSError:
        pass


def unregister():
    pass
'''


def scripts_dir(version: str = BLENDER_VERSION) -> Path:
    """Blender's user scripts folder on this platform (``BLENDER_USER_SCRIPTS`` when set)."""
    if os.environ.get("BLENDER_USER_SCRIPTS"):
        return Path(os.environ["BLENDER_USER_SCRIPTS"])
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", home / "AppData" / "Roaming")) / "Blender Foundation" / "Blender"
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support" / "Blender"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "blender"
    return base / version / "scripts"


def install(scripts: Path | None = None) -> list[str]:
    """Write the add-on shim, its environment record and the one-time enabler; returns what was done."""
    from keyface.addon.krita.install import environment
    from keyface.core import __version__

    scripts = Path(scripts) if scripts else scripts_dir()
    folder = scripts / "addons" / ADDON
    enabler = scripts / "startup" / ENABLER
    for path in (folder, enabler):
        if path.exists() and not _ours(path):
            raise KeyfaceError(f"{path} exists and was not written by keyface: move it away first")
    env = environment()
    numbers = [int(n) for n in re.findall(r"\d+", __version__)][:3]
    version = ", ".join(str(n) for n in numbers + [0] * (3 - len(numbers)))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        enabler.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "environment.json", json.dumps(env, indent=1))
        atomic_write_text(folder / "__init__.py", SHIM.format(marker=MARKER, version=version))
        atomic_write_text(enabler, ENABLE.format(marker=MARKER, addon=ADDON))
    except OSError as e:
        raise KeyfaceError(f"cannot write the add-on into {scripts}: {e}") from None
    return [f"add-on: {folder}",
            f"enabled at Blender's next start by {enabler}",
            f"Python environment: {env['executable']} (Python {env['python'][0]}.{env['python'][1]}; Blender 4.5 "
            "runs 3.11)",
            "start Blender, then Image Editor or Sequencer → Sidebar (N) → keyface"]


def uninstall(scripts: Path | None = None) -> list[str]:
    scripts = Path(scripts) if scripts else scripts_dir()
    done = []
    folder = scripts / "addons" / ADDON
    enabler = scripts / "startup" / ENABLER
    for path in (folder, enabler):
        if path.exists() and not _ours(path):
            raise KeyfaceError(f"{path} was not written by keyface: left alone")
    if folder.exists():
        shutil.rmtree(folder)
        done.append(f"removed {folder}")
    if enabler.exists():
        enabler.unlink()
        done.append(f"removed {enabler}")
    return done or ["keyface was not installed there"]


def _ours(path: Path) -> bool:
    init = path / "__init__.py" if path.is_dir() else path
    return init.is_file() and MARKER in init.read_text(encoding="utf-8", errors="replace")
