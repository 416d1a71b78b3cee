"""Host plugins: put keyface into the painting and animation programs artists already use."""

from __future__ import annotations


def cmd_host(args, out) -> int:
    """``keyface krita|blender install|uninstall``: the host's installer prints what it did, line by line."""
    if args.host == "krita":
        from keyface.addon.krita import install

        where = (args.pykrita, args.kritarc)
    else:
        from keyface.addon.blender import install

        where = (args.scripts,)
    action = install.install if args.action == "install" else install.uninstall
    for line in action(*where):
        out.write(line + "\n")
    return 0


def add(cmds) -> None:
    k = cmds.top.add_parser("krita", help="install or remove the Krita plugin (a keyface docker)")
    k.set_defaults(host="krita")
    ksub = k.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("install", "put the plugin in Krita's pykrita folder and enable it (run with Krita closed)"),
                       ("uninstall", "remove the plugin and its kritarc entry")):
        kp = ksub.add_parser(name, help=text)
        kp.add_argument("--pykrita", metavar="DIR", help="Krita's pykrita folder (default: this platform's)")
        kp.add_argument("--kritarc", metavar="FILE", help="Krita's settings file (default: this platform's)")
        kp.set_defaults(run=cmd_host)
    b = cmds.top.add_parser("blender", help="install or remove the Blender add-on (a keyface sidebar tab)")
    b.set_defaults(host="blender")
    bsub = b.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("install", "put the add-on in Blender's scripts folder; it is enabled at Blender's next start"),
                       ("uninstall", "remove the add-on and its enabler")):
        bp = bsub.add_parser(name, help=text)
        bp.add_argument("--scripts", metavar="DIR",
                        help="Blender's user scripts folder (default: this platform's, for Blender 4.5)")
        bp.set_defaults(run=cmd_host)
