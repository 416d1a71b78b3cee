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


HOSTS = {  # host → (its help, {action: help}, [(option, metavar, help)])
    "krita": ("install or remove the Krita plugin (a keyface docker)",
              {"install": "put the plugin in Krita's pykrita folder and enable it (run with Krita closed)",
               "uninstall": "remove the plugin and its kritarc entry"},
              [("--pykrita", "DIR", "Krita's pykrita folder (default: this platform's)"),
               ("--kritarc", "FILE", "Krita's settings file (default: this platform's)")]),
    "blender": ("install or remove the Blender add-on (a keyface sidebar tab)",
                {"install": "put the add-on in Blender's scripts folder; it is enabled at Blender's next start",
                 "uninstall": "remove the add-on and its enabler"},
                [("--scripts", "DIR", "Blender's user scripts folder (default: this platform's, for Blender 4.5)")]),
}


def add(cmds) -> None:
    for host, (text, actions, options) in HOSTS.items():
        hp = cmds.top.add_parser(host, help=text)
        hp.set_defaults(host=host)
        sub = hp.add_subparsers(dest="action", required=True, metavar="ACTION")
        for name, action_text in actions.items():
            ap = sub.add_parser(name, help=action_text)
            for option, metavar, option_text in options:
                ap.add_argument(option, metavar=metavar, help=option_text)
            ap.set_defaults(run=cmd_host)
